"""SANDBOX SIDE: the Python stub of a warm sandbox, sent as ``python3 -c`` source; never imported.

It runs in the sandbox image's own python3 (written for 3.6 and later, importing nothing that
a fresh ``python3 -c`` has not already loaded), so the interpreter has started before a call
arrives. For a call it reads the program block of the request (``warm.encode_request``) and
forks: the child takes /dev/null or a pipe as stdin, enters the working directory, and either
runs a ``python3 -c CODE`` request in its own, already started, interpreter, as ``python3 -c``
would (argv, a fresh ``__main__``, the traceback without our frame, exit codes), or execs the
argv with the signal dispositions a fresh process has. The call's nonce is read before the
fork into a page the child gets as zeros (after it, on a kernel without MADV_WIPEONFORK), so
the program never holds it; the stub is not dumpable, so the program cannot read it from
the stub either. The parent feeds stdin, waits, and writes the end marker
with the exit code on both streams, exactly as the sh stub in ``warm`` does. Before it runs
anything it compares the mount table with the one it started with: a mask whose host file
was replaced has gone with it, and the stub answers ``STALE_CODE`` instead.

A copy stub (``warm.COPY_STUB_ARGV``: a `copy` or `rw` call) first reads the copy, a base64
tar stream, and has a child unpack it into ``/workspace``. Once the program has ended it
SIGKILLs every other process of the sandbox until none is left, writes its marker, then
``/workspace`` as a tar stream on stdout and a trailer with the nonce, which vouches that
the copy came out whole. It answers ``STALE_CODE`` to a copy that did not land, and to any
copy when the program could take its nonce (no ``_ctypes``, or no MADV_WIPEONFORK).
"""

if __name__ == "__main__":
    _FRESH = dict(globals(), __doc__=None)  # what `python3 -c` gives a program
    import os
    import sys

    def _fail(message: str, code: int) -> None:
        os.write(2, ("mcp-sandbox: " + message + "\n").encode("utf-8", "surrogateescape"))
        os._exit(code)

    def _read_exact(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = os.read(0, size - len(data))
            if not chunk:
                _fail("the request ended early", 97)
            data += chunk
        return data

    def _read_line(limit: int) -> bytes:
        """One short line, a byte at a time: nothing after it is taken from stdin."""
        data = b""
        while not data.endswith(b"\n"):
            byte = os.read(0, 1)
            if not byte or len(data) > limit:
                _fail("the request is malformed", 97)
            data += byte
        return data[:-1]

    def _unescape(line: str) -> str:
        """The inverse of ``warm._line``: ``\\\\`` is a backslash, ``\\0ooo`` an octal byte."""
        out = []
        i = 0
        while i < len(line):
            c = line[i]
            if c == "\\" and line[i + 1 : i + 2] == "\\":
                out.append("\\")
                i += 2
            elif c == "\\" and line[i + 1 : i + 2] == "0":
                out.append(chr(int(line[i + 2 : i + 5], 8)))
                i += 5
            else:
                out.append(c)
                i += 1
        return "".join(out)

    def _mount_points() -> "list[bytes]":
        try:
            with open("/proc/self/mountinfo", "rb") as f:
                return [line.split(b" ")[4] for line in f.read().splitlines()]
        except (OSError, IndexError):
            return []

    _MOUNTS = _mount_points()  # as the daemon made them: a mask that goes away is stale

    def _built_quietly(build: "object") -> "object":
        """``build()``, or None where it fails (an older python or kernel). What it imports
        is taken out of ``sys.modules`` again: a program sees the modules a fresh
        ``python3 -c`` has."""
        loaded = set(sys.modules)
        try:
            made = build()  # type: ignore[operator]
        except Exception:
            made = None
        for name in set(sys.modules) - loaded:
            del sys.modules[name]
        return made

    def _dumpable_switch() -> "object":
        """``prctl(PR_SET_DUMPABLE, flag)``, built on ``_ctypes`` alone: the ``ctypes``
        package would hold a megabyte more in every idle sandbox."""
        import _ctypes

        class _Int(_ctypes._SimpleCData):  # type: ignore[type-arg]
            _type_ = "i"

        class _ULong(_ctypes._SimpleCData):  # type: ignore[type-arg]
            _type_ = "L"

        class _Prctl(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL
            _restype_ = _Int
            _argtypes_ = (_Int, _ULong, _ULong, _ULong, _ULong)

        class _Libc:
            _handle = _ctypes.dlopen(None, 0)  # type: ignore[arg-type]  # the program

        prctl = _Prctl(("prctl", _Libc()))  # type: ignore[arg-type]  # has a _handle
        return lambda flag: prctl(4, flag, 0, 0, 0)

    # Not dumpable: no process of our uid (the program is one) may open our /proc/PID/mem or
    # /proc/PID/fd/0 and so take the nonce, from our memory or from our stdin before we do.
    _set_dumpable = _built_quietly(_dumpable_switch)  # None without _ctypes: nonce readable
    if _set_dumpable is not None:
        _set_dumpable(0)  # type: ignore[operator]  # a ctypes function; the stub imports no typing

    def _wiped_on_fork() -> "object":
        """A page a forked child gets as zeros (MADV_WIPEONFORK, Linux 4.14)."""
        import mmap

        # Private: the kernel wipes only private anonymous memory on fork.
        page = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        page.madvise(18)  # MADV_WIPEONFORK: Python 3.11 has no name for it
        return page

    # The nonce is read into this page before the fork: the program's copy of it is zeros,
    # and nothing of the request is left on our stdin (which tini, pid 1, holds too, and
    # whose /proc/1/fd/0 the program may open) once the program runs.
    _NONCE_PAGE = _built_quietly(_wiped_on_fork)  # None: the nonce is read after the fork

    def _read_nonce_into_page() -> int:
        """The nonce line, a byte at a time, into ``_NONCE_PAGE``; its length."""
        view = memoryview(_NONCE_PAGE)  # type: ignore[arg-type]
        for n in range(65):
            if os.readv(0, [view[n : n + 1]]) != 1:
                _fail("the request ended early", 97)
            if view[n] == 10:
                return n
        _fail("the request is malformed", 97)
        return 0  # not reached

    def _nonce_from_page(length: int) -> str:
        return bytes(memoryview(_NONCE_PAGE)[:length]).decode("ascii")  # type: ignore[arg-type]

    def _write_all(fd: int, data: bytes) -> None:
        while data:
            data = data[os.write(fd, data) :]

    def _feed_stdin(pipe: int) -> None:
        """The rest of our stdin, base64, decoded into the program's stdin pipe."""
        import binascii  # built in; imported after the fork, so the program never sees it

        held = b""
        try:
            while True:
                chunk = os.read(0, 65536)
                if not chunk:
                    break
                data = held + chunk
                cut = len(data) - len(data) % 4
                held = data[cut:]
                _write_all(pipe, binascii.a2b_base64(data[:cut]))
        except OSError:
            pass  # the program closed its stdin or ended: the rest is not wanted
        os.close(pipe)

    def _oom_kills() -> int:
        """The sandbox's OOM kills so far (its memory cgroup, v1 or v2), or -1."""
        for path in ("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events"):
            try:
                with open(path, "rb") as f:
                    for line in f:
                        if line.startswith(b"oom_kill "):
                            return int(line.split()[1])
            except (OSError, ValueError):
                pass
        return -1

    def _cgroup_number(path: str, key: bytes = b"") -> int:
        """The first number of a cgroup file, or the one after ``key``; -1 if unreadable."""
        try:
            with open(path, "rb") as f:
                for line in f:
                    words = line.split()
                    if not key:
                        return int(words[0])
                    if len(words) == 2 and words[0] == key:
                        return int(words[1])
        except (OSError, ValueError, IndexError):
            pass
        return -1

    def _usage_now(cwd: str) -> "list[int]":
        """As ``usage.USAGE_SH``'s ``usage_now``: the sandbox's figures so far."""
        c = "/sys/fs/cgroup/"
        cpu_user = _cgroup_number(c + "cpuacct/cpuacct.usage_user")
        cpu_sys = _cgroup_number(c + "cpuacct/cpuacct.usage_sys")
        if cpu_user < 0:
            cpu_user = _cgroup_number(c + "cpu.stat", b"user_usec")
            cpu_sys = _cgroup_number(c + "cpu.stat", b"system_usec")
            cpu_user, cpu_sys = (v * 1000 if v >= 0 else -1 for v in (cpu_user, cpu_sys))
        peak = _cgroup_number(c + "memory/memory.max_usage_in_bytes")
        kills = _oom_kills()
        if peak < 0:
            peak = _cgroup_number(c + "memory.peak")
        pids = _cgroup_number(c + "pids/pids.peak")
        if pids < 0:
            pids = _cgroup_number(c + "pids.peak")
        used = []
        for path in ("/tmp", cwd):
            try:
                st = os.statvfs(path)
                used.append((st.f_blocks - st.f_bfree) * st.f_frsize)
            except OSError:
                used.append(-1)
        return [cpu_user, cpu_sys, peak, kills, pids, used[0], used[1]]

    def _usage_since(before: "list[int]", cwd: str) -> str:
        """The fields of ``usage.Usage``: cpu and bytes added since ``before``, peaks."""
        now = _usage_now(cwd)
        for i in (0, 1, 5, 6):
            now[i] = -1 if now[i] < 0 or before[i] < 0 else now[i] - before[i]
        return ",".join(str(v) for v in now)

    # A copy stub has what it needs loaded before its call, and out of ``sys.modules`` again:
    # a program sees the modules a fresh ``python3 -c`` has.
    _COPY = sys.argv[1:] == ["copy"]
    _TARFILE = _built_quietly(lambda: __import__("tarfile")) if _COPY else None
    _BINASCII = _built_quietly(lambda: __import__("binascii")) if _COPY else None
    _BLAKE2 = _built_quietly(lambda: __import__("_blake2")) if _COPY else None
    if _TARFILE is not None:
        # Names of owners are not wanted in the copy that goes back: no passwd lookups.
        _TARFILE.pwd = _TARFILE.grp = None  # type: ignore[attr-defined]
    # A file sent back as it came is marked so in its pax header, without its bytes.
    _SAME = "MCPSANDBOX.same"

    def _fingerprint(data: "object") -> bytes:
        return _BLAKE2.blake2b(data, digest_size=16).digest()  # type: ignore[attr-defined, no-any-return]

    def _read_b64(size: int) -> "bytes | None":
        """``size`` bytes of base64, next on stdin, decoded (None: they were not base64)."""
        parts = []
        left = size
        while left > 0:
            chunk = os.read(0, min(left, 1 << 20))
            if not chunk:
                _fail("the request ended early", 97)
            parts.append(chunk)
            left -= len(chunk)
        if _BINASCII is None:
            return None
        try:
            return _BINASCII.a2b_base64(b"".join(parts))  # type: ignore[attr-defined, no-any-return]
        except Exception:
            return None

    def _extract(data: bytes, sent: "dict[str, tuple[int, int, bytes]]", whole: bool) -> bool:
        """Unpack the tar stream ``data`` into ``/workspace`` in a child (nothing it does
        reaches the program's process); meanwhile note each file's size, mode and digest in
        ``sent``, by the name the copy going back gives it. Whether it all landed."""
        import io  # loaded at start-up: nothing new for the program

        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                # Nothing of the unpacking (a warning, say) reaches the call's stderr.
                os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
                if whole:
                    # runc gives a tmpfs the mode of the image's directory beneath (1777):
                    # the cold path's volume is 0755, and so is this copy's root.
                    os.chmod("/workspace", 0o755)
                # The server built this stream from its scan of the tree: relative names,
                # links as the container resolves them (an absolute link is meant).
                with _TARFILE.open(fileobj=io.BytesIO(data), mode="r:") as tar:  # type: ignore[attr-defined]
                    try:
                        tar.extractall("/workspace", filter="fully_trusted")
                    except TypeError:  # a python from before extraction filters
                        tar.extractall("/workspace")
                code = 0
            except BaseException:
                pass
            os._exit(code)
        try:
            view = memoryview(data)
            with _TARFILE.open(fileobj=io.BytesIO(data), mode="r:") as tar:  # type: ignore[attr-defined]
                for m in tar:
                    if m.isreg():
                        body = view[m.offset_data : m.offset_data + m.size]
                        sent["workspace/" + m.name] = (m.size, m.mode & 0o7777, _fingerprint(body))
            ok = True
        except Exception:
            ok = False
        return os.waitpid(pid, 0)[1] == 0 and ok

    def _unpack(size: int) -> "dict[str, tuple[int, int, bytes]] | None":
        """The copy, ``size`` bytes of a base64 tar stream next on stdin, unpacked into an
        empty ``/workspace``: each file's size, mode and digest (None: it did not land)."""
        data = _read_b64(size)
        if data is None or _TARFILE is None or _BLAKE2 is None:
            return None
        sent: dict[str, tuple[int, int, bytes]] = {}
        return sent if _extract(data, sent, True) else None

    def _patch(head: bytes, sent: "dict[str, tuple[int, int, bytes]] | None") -> bool:
        """Turn the copy this stub holds into the tree as it is now (``copy_delta``): remove
        the paths listed, deepest first, then unpack the patch. Directories of the copy that
        its own user may not write are opened for it meanwhile and closed again."""
        import stat

        sizes = head[1:].split(b" ")
        names = _read_b64(int(sizes[0]))
        data = _read_b64(int(sizes[1]))
        if sent is None or names is None or data is None or _TARFILE is None:
            return False
        opened: dict[str, int] = {}

        def writable(path: str) -> None:
            if path in opened or not os.path.isdir(path):
                return
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            if mode & 0o300 != 0o300:
                opened[path] = mode
                os.chmod(path, mode | 0o700)

        try:
            for raw in names.split(b"\0") if names else []:
                rel = raw.decode("utf-8", "surrogateescape")
                if rel.startswith("/") or any(p in ("", ".", "..") for p in rel.split("/")):
                    return False
                path = "/workspace/" + rel
                writable(os.path.dirname(path))
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    os.rmdir(path)  # deepest first: what it held went before it
                else:
                    os.unlink(path)
                sent.pop("workspace/" + rel, None)
            import io

            patched = set()
            with _TARFILE.open(fileobj=io.BytesIO(data), mode="r:") as tar:  # type: ignore[attr-defined]
                for m in tar:
                    path = "/workspace/" + m.name
                    writable(os.path.dirname(path))
                    if m.isdir():
                        writable(path)
                        patched.add(path)
            landed = _extract(data, sent, False)
            for path, mode in opened.items():
                if path not in patched:  # the patch's own directories have their modes
                    os.chmod(path, mode)
            return landed
        except (OSError, ValueError):
            return False

    def _alone() -> bool:
        """SIGKILL every process of the sandbox but tini and this stub, until none is left
        (tini reaps them): then nothing of the run can change the copy as it goes out."""
        import time

        for _ in range(3000):
            try:
                os.kill(-1, 9)  # on Linux never the caller, and never pid 1
            except ProcessLookupError:
                return True
            except OSError:
                return False
            time.sleep(0.001)
        return False

    def _send_copy(sent: "dict[str, tuple[int, int, bytes]]") -> None:
        """``/workspace`` as a tar stream on stdout, as the daemon's archive names it (under
        ``workspace/``): links never followed, hard links as links, sockets left out. What
        the run made unreadable to its own user is made readable first (root would read it).
        A file whose size, mode and bytes are those it was sent with comes as a header only,
        marked ``_SAME``: the server knows its bytes."""
        import stat

        class _Out:
            def __init__(self) -> None:
                self.buf = bytearray()

            def write(self, data: bytes) -> None:
                self.buf += data
                if len(self.buf) >= 262144:
                    self.flush()

            def flush(self) -> None:
                _write_all(1, bytes(self.buf))
                self.buf = bytearray()

        out = _Out()
        tarfile = _TARFILE
        tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)  # type: ignore[attr-defined]
        tar.encoding, tar.errors = "utf-8", "surrogateescape"
        first_of: dict[
            tuple[int, int], str
        ] = {}  # (device, inode) of a file with more names -> the first one sent
        # Walked by descriptor, one name at a time: no path grows past PATH_MAX however deep
        # the run made the tree. A directory's descriptor closes after what it holds.
        todo: list[tuple[int | None, str, str]] = [(None, "/workspace", "workspace")]
        while todo:
            at, name, arc = todo.pop()
            if name == "" and at is not None:  # the end of a directory's entries
                os.close(at)
                continue
            st = os.stat(name, dir_fd=at, follow_symlinks=False)
            mode = stat.S_IMODE(st.st_mode)
            info = tarfile.TarInfo(arc)  # type: ignore[attr-defined]
            info.mode, info.mtime, info.uid, info.gid = mode, st.st_mtime, st.st_uid, st.st_gid
            if stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in first_of:
                    info.type, info.linkname = tarfile.LNKTYPE, first_of[key]  # type: ignore[attr-defined]
                    tar.addfile(info)
                    continue
                first_of[key] = arc
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                try:
                    fd = os.open(name, flags, dir_fd=at)
                except PermissionError:  # the run's own file, chmod 000: root would read it
                    os.chmod(name, mode | 0o400, dir_fd=at)
                    fd = os.open(name, flags, dir_fd=at)
                with os.fdopen(fd, "rb") as f:
                    info.size = st.st_size
                    before = sent.get(arc)
                    if before is not None and before[:2] == (info.size, mode):
                        body = f.read(info.size + 1)
                        if len(body) == info.size and _fingerprint(body) == before[2]:
                            info.pax_headers = {_SAME: "1"}
                            info.size = 0
                            tar.addfile(info)
                            continue
                        f.seek(0)
                    tar.addfile(info, f)
            elif stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE  # type: ignore[attr-defined]
                tar.addfile(info)
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                try:
                    fd = os.open(name, flags, dir_fd=at)
                except PermissionError:
                    os.chmod(name, mode | 0o500, dir_fd=at)
                    fd = os.open(name, flags, dir_fd=at)
                todo.append((fd, "", ""))
                todo.extend((fd, c, arc + "/" + c) for c in sorted(os.listdir(fd), reverse=True))
            elif stat.S_ISLNK(st.st_mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(name, dir_fd=at)  # type: ignore[attr-defined]
                tar.addfile(info)
            elif stat.S_ISFIFO(st.st_mode):
                info.type = tarfile.FIFOTYPE  # type: ignore[attr-defined]
                tar.addfile(info)
            # Sockets (and devices, which no one here can make) are left out.
        tar.close()
        out.flush()

    def _serve() -> str:
        """Parent: run the call and exit with its code. Child: exec, or return the code
        of a ``python3 -c`` request for the module level below to run."""
        head = _read_line(40)
        # A copy stub gets its copy while it waits ("A"), and at the call what changed in
        # the tree since ("P").
        copy = head.startswith(b"A")
        sent = _unpack(int(head[1:])) if copy else {}
        if copy:
            head = _read_line(40)
        if copy and head.startswith(b"P"):
            sent = sent if _patch(head, sent) else None
            head = _read_line(40)
        # A copy may only go back out from a stub whose nonce the program cannot take: the
        # trailer after it is what says it is whole.
        landed = sent is not None and (
            not copy or (_set_dumpable is not None and _NONCE_PAGE is not None)
        )
        block = _read_exact(int(head)).decode("utf-8", "surrogateescape")
        lines = block.split("\n")
        cwd, count = _unescape(lines[0]), int(lines[2])
        has_stdin, report = lines[1].startswith("1"), lines[1].endswith("u")
        argv = [_unescape(arg) for arg in lines[3 : 3 + count]]
        early = -1 if _NONCE_PAGE is None else _read_nonce_into_page()
        if _mount_points() != _MOUNTS or not landed:
            # A mount went away while we waited: the host replaced a masked file, and its
            # overmount went with the old one. Or the copy did not land. Nothing runs: the
            # server goes cold.
            _end(_read_line(64).decode("ascii") if early < 0 else _nonce_from_page(early), 999)
        if has_stdin:
            stdin, feed = os.pipe()
        else:
            stdin, feed = os.open(os.devnull, os.O_RDONLY), -1
        kills = _oom_kills()
        before = _usage_now(cwd) if report else []
        import _signal  # type: ignore[import-not-found]  # loaded at start-up, unlike signal

        # A SIGINT from the program must not put our traceback into its stderr: the stub
        # ignores it from before the fork; the program gets what a fresh one has.
        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
        pid = os.fork()
        if pid == 0:
            if _set_dumpable is not None:
                # The program's own /proc entries are its own, as in a cold sandbox.
                _set_dumpable(1)  # type: ignore[operator]
            os.dup2(stdin, 0)
            os.close(stdin)
            if feed >= 0:
                os.close(feed)
            if cwd != os.getcwd():
                try:
                    os.chdir(cwd)
                except OSError:
                    _fail("uid 65534 cannot enter " + cwd + "; chmod o+rx the workspace", 96)
            if len(argv) == 3 and argv[0] == "python3" and argv[1] == "-c":
                _signal.signal(_signal.SIGINT, _signal.default_int_handler)
                return argv[2]
            # Python ignores SIGPIPE and SIGXFSZ; a program started by the daemon does not.
            _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
            _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
            _signal.signal(_signal.SIGXFSZ, _signal.SIG_DFL)
            try:
                os.execvp(argv[0], argv)
            except OSError as e:
                _fail(argv[0] + ": " + (e.strerror or "cannot run"), 127 if e.errno == 2 else 126)
        os.close(stdin)
        nonce = _read_line(64).decode("ascii") if early < 0 else _nonce_from_page(early)
        if feed >= 0:
            _feed_stdin(feed)
        status = os.waitpid(pid, 0)[1]
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        # A process of the program's killed for memory, as a cold run's daemon reports it.
        usage = _usage_since(before, cwd) if report else ""
        _end(nonce, code, 0 <= kills < _oom_kills(), usage, sent if copy else None)
        return ""  # not reached: _end exits

    def _end(
        nonce: str,
        code: int,
        oom: bool = False,
        usage: str = "",
        sent: "dict[str, tuple[int, int, bytes]] | None" = None,
    ) -> None:
        # A copy goes out once no process of the run is left to change it (a cold run's
        # sandbox is gone before the daemon reads its copy back).
        alone = sent is not None and _alone()
        tags = (":oom" if oom else "") + (":u=" + usage if usage else "")
        marker = f"\0mcp-sandbox-end:{nonce}:{code}{tags}\0".encode("ascii")
        _write_all(1, marker)
        _write_all(2, marker)
        if alone:
            try:
                _send_copy(sent)  # type: ignore[arg-type]  # not None when alone
            except Exception:
                os._exit(code)  # no trailer: the server reports the copy as lost
            _write_all(1, f"\0mcp-sandbox-copy:{nonce}\0".encode("ascii"))
        os._exit(95 if code == 999 else code)

    _source = _serve()
    # The child, on the fast path: from here on, this process is `python3 -c _source`.
    _main = type(sys)("__main__")
    _main.__dict__.update(_FRESH)
    sys.modules["__main__"] = _main
    sys.argv[:] = ["-c"]
    if hasattr(sys, "orig_argv"):
        sys.orig_argv[2:] = [_source]
    try:
        exec(compile(_source, "<string>", "exec", dont_inherit=True), _main.__dict__)
    except SystemExit:
        raise
    except BaseException as _error:
        # As `python3 -c` reports it: our frame (the top of the traceback) left out.
        _tb = _error.__traceback__
        _error.__traceback__ = _tb.tb_next if _tb is not None else None
        sys.excepthook(type(_error), _error, _error.__traceback__)
        raise SystemExit(130 if isinstance(_error, KeyboardInterrupt) else 1) from None
