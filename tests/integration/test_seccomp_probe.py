"""seccomp/default.json in a real container: refused calls fail politely, real workloads pass.

Every snippet below is plain code in a language `run_code` accepts. Its contract: exit 0
with ``PASS`` as the last line of stdout. Snippets assert internally and print what went
wrong, so they can move unchanged behind the MCP `run_code` tool.

They run through the real `run_code` tool of a real server, in both protocol eras.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from mcp_sandbox.sandbox.seccomp_profile import load_source, refused_syscalls
from sandbox_client import RUNTIME, call

pytestmark = [pytest.mark.docker, pytest.mark.walls]

REPO_ROOT = Path(__file__).resolve().parents[2]
PASS = "PASS"

# Refused syscalls by x86_64 number (the sandbox image is amd64), with arguments chosen
# so that a call the kernel actually ran would mostly answer something other than EPERM
# (0, EINVAL, EBADF, ESRCH, a new fd): EPERM here means seccomp refused it. "pid" stands
# for the caller's pid. `test_every_refused_syscall_is_probed` keeps this complete.
REFUSED_X86_64_CALLS: dict[str, tuple[int | str, ...]] = {
    "ptrace": (101, 0x7FFF, "pid", 0, 0),
    "process_vm_readv": (310, "pid", 0, 0, 0, 0, 0),
    "process_vm_writev": (311, "pid", 0, 0, 0, 0, 0),
    "kcmp": (312, "pid", "pid", 0, 0, 0),
    "pidfd_getfd": (438, -1, -1, 0),
    "process_madvise": (440, -1, 0, 0, 0, 0),
    "process_mrelease": (448, -1, 0),
    "bpf": (321, 0x7FFF, 0, 0),
    "perf_event_open": (298, 0, 0, -1, -1, 0),
    "userfaultfd": (323, 0),
    "add_key": (248, 0, 0, 0, 0, 0),
    "request_key": (249, 0, 0, 0, 0),
    "keyctl": (250, 0x7FFF, 0, 0, 0, 0),
    "mount": (165, 0, 0, 0, 0, 0),
    "umount2": (166, 0, 0),
    "pivot_root": (155, 0, 0),
    "chroot": (161, 0),
    "open_tree": (428, -1, 0, 0),
    "move_mount": (429, -1, 0, -1, 0, 0),
    "fsopen": (430, 0, 0),
    "fsconfig": (431, -1, 0, 0, 0, 0),
    "fsmount": (432, -1, 0, 0),
    "fspick": (433, -1, 0, 0),
    "mount_setattr": (442, -1, 0, 0, 0, 0),
    "unshare": (272, 0x10000000),  # CLONE_NEWUSER: an unprivileged user may do this
    "setns": (308, -1, 0),
    "io_uring_setup": (425, 1, 0),
    "io_uring_enter": (426, -1, 0, 0, 0, 0, 0),
    "io_uring_register": (427, -1, 0, 0, 0),
    "kexec_load": (246, 0, 0, 0, 0),
    "kexec_file_load": (320, -1, -1, 0, 0, 0),
    "init_module": (175, 0, 0, 0),
    "finit_module": (313, -1, 0, 0),
    "delete_module": (176, 0, 0),
    "create_module": (174, 0, 0),
    "get_kernel_syms": (177, 0),
    "query_module": (178, 0, 0, 0, 0, 0),
    "name_to_handle_at": (303, -1, 0, 0, 0, 0),
    "open_by_handle_at": (304, -1, 0, 0),
    "acct": (163, 0),
    "swapon": (167, 0, 0),
    "swapoff": (168, 0),
    "reboot": (169, 0, 0, 0, 0),
    "settimeofday": (164, 0, 0),
    "clock_settime": (227, 0x7FFF, 0),
    "adjtimex": (159, 0),
    "clock_adjtime": (305, 0x7FFF, 0),
    "quotactl": (179, 0, 0, 0, 0),
    "quotactl_fd": (443, -1, 0, 0, 0),
    "lookup_dcookie": (212, 0, 0, 0),
    "iopl": (172, 0),
    "ioperm": (173, 0, 0, 0),
    "modify_ldt": (154, 0x7FFF, 0, 0),
    "syslog": (103, 0x7FFF, 0, 0),
    "fanotify_init": (300, 0, 0),
    "fanotify_mark": (301, -1, 0, 0, -1, 0),
    "mbind": (237, 0, 0, 0x7FFF, 0, 0, 0),
    "set_mempolicy": (238, 0x7FFF, 0, 0),
    "get_mempolicy": (239, 0, 0, 0, 0, 0x7FFF),
    "migrate_pages": (256, "pid", 0, 0, 0),
    "move_pages": (279, "pid", 0, 0, 0, 0, 0),
    "set_mempolicy_home_node": (450, 0, 0, 0, 0),
    "sethostname": (170, 0, 0),
    "setdomainname": (171, 0, 0),
    "_sysctl": (156, 0),
    "nfsservctl": (180, 0, 0, 0),
    "remap_file_pages": (216, 0, 0, 0, 0, 0),
    "sysfs": (139, 0x7FFF, 0, 0),
    "uselib": (134, 0),
    "ustat": (136, 0, 0),
    "vhangup": (153,),
    "get_thread_area": (211, 0),
    "set_thread_area": (205, 0),
    "afs_syscall": (183,),
    "epoll_ctl_old": (214,),
    "epoll_wait_old": (215,),
    "getpmsg": (181,),
    "putpmsg": (182,),
    "security": (185,),
    "tuxcall": (184,),
    "vserver": (236,),
    "open_tree_attr": (467, -1, 0, 0, 0, 0),
    "statmount": (457, 0, 0, 0, 0),
    "listmount": (458, 0, 0, 0, 0),
    "lsm_get_self_attr": (459, 0x7FFF, 0, 0, 0),
    "lsm_set_self_attr": (460, 0x7FFF, 0, 0, 0),
    "lsm_list_modules": (461, 0, 0, 0),
    "file_getattr": (468, -1, 0, 0, 0, 0),
    "file_setattr": (469, -1, 0, 0, 0, 0),
}
# runc answers ENOSYS, not EPERM, for numbers above the newest syscall its libseccomp
# knows (456 with Debian bookworm's); refused either way.
NEWER_THAN_LIBSECCOMP = frozenset(
    {"open_tree_attr", "statmount", "listmount", "lsm_get_self_attr", "lsm_set_self_attr",
     "lsm_list_modules", "file_getattr", "file_setattr"}
)  # fmt: skip
# In the source but absent from the x86_64 table (i386-only calls).
NOT_ON_X86_64 = frozenset({"stime", "umount", "vm86", "vm86old"})

_REFUSED_PROBE = (
    f"CALLS = {REFUSED_X86_64_CALLS!r}\nNEWER = {sorted(NEWER_THAN_LIBSECCOMP)!r}\n"
    + r"""
import ctypes, errno, json, os

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
pid = os.getpid()

def call(nr, *args):
    ctypes.set_errno(0)
    rc = libc.syscall(nr, *[ctypes.c_long(pid if a == "pid" else a) for a in args])
    return errno.errorcode.get(ctypes.get_errno(), "?") if rc == -1 else "ok"

results, expected = {}, {}
for name, (nr, *args) in CALLS.items():
    results[name], expected[name] = call(nr, *args), "EPERM"
    if name in NEWER and results[name] == "ENOSYS":
        expected[name] = "ENOSYS"
# Filtered rather than refused outright: harmful arguments only.
checks = {
    "clone3": ((435, 0, 0), "ENOSYS"),
    "personality(READ_IMPLIES_EXEC)": ((135, 0x0400000), "EPERM"),
    "personality(ADDR_NO_RANDOMIZE)": ((135, 0x0040000), "EPERM"),
    # gVisor's kernel has no query: the filter let it through, gVisor says EINVAL.
    "personality(query)": ((135, 0xFFFFFFFF), "EINVAL" if GVISOR else "ok"),
    "socket(AF_VSOCK)": ((41, 40, 1, 0), "EPERM"),
    "socket(AF_ALG)": ((41, 38, 5, 0), "EPERM"),
    "socket(AF_PACKET)": ((41, 17, 3, 0), "EPERM"),
    "socket(AF_UNIX)": ((41, 1, 1, 0), "ok"),
    "socket(AF_INET)": ((41, 2, 1, 0), "ok"),
    "socket(AF_INET6)": ((41, 10, 2, 0), "ok"),
    "socket(AF_NETLINK)": ((41, 16, 3, 0), "ok"),
    "socket(AF_NETLINK, KOBJECT_UEVENT)": ((41, 16, 2, 15), "EPERM"),
    "socket(AF_NETLINK, SOCK_DIAG)": ((41, 16, 3, 4), "EPERM"),
    # A null pointer for the pair: EFAULT means the filter let the call through.
    "socketpair(AF_UNIX)": ((53, 1, 1, 0, 0), "EFAULT"),
    "socketpair(AF_VSOCK)": ((53, 40, 1, 0, 0), "EPERM"),
    "socketpair(AF_INET)": ((53, 2, 1, 0, 0), "EPERM"),
}
for name, (args, want) in checks.items():
    results[name], expected[name] = call(*args), want
wrong = {n: (results[n], expected[n]) for n in results if results[n] != expected[n]}
assert not wrong, f"got, expected: {json.dumps(wrong)}"
print("PASS")
"""
)

# clone(2) on x86_64 is clone(flags, stack, parent_tid, child_tid, tls). A call that got
# through would return 0 in a child, which must leave at once.
_CLONE_PROBE = r"""
import ctypes, errno, os, signal

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}

def clone(flags):
    ctypes.set_errno(0)
    rc = libc.syscall(56, ctypes.c_long(flags | signal.SIGCHLD), 0, 0, 0, 0)
    if rc == 0:
        os._exit(0)
    if rc > 0:
        os.waitpid(rc, 0)
        return "created"
    return errno.errorcode[ctypes.get_errno()]

assert clone(0) == "created", "plain clone (fork) must work"
wrong = {n: r for n, f in NAMESPACE_FLAGS.items() if (r := clone(f)) != "EPERM"}
assert not wrong, f"namespace clone not refused with EPERM: {wrong}"
print("PASS")
"""

# Calls from the i386 (int 0x80) and x32 ABIs. libseccomp answers architectures missing
# from the filter with its bad-arch action, which runc leaves at KILL: the caller dies of
# SIGSYS. The native filter never sees these calls, so none of its allow rules apply.
_FOREIGN_ABI_PROBE = r"""
import signal, subprocess, sys

CHILD = '''
import ctypes, mmap, sys
code = bytes.fromhex(sys.argv[1])
buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
buf.write(code)
fn = ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(buf)))
print("returned", fn())
'''
CODES = {
    "i386 getpid via int 0x80": "b814000000cd80c3",  # mov eax,20; int 0x80; ret
    "x32 getpid": "b8270000400f05c3",  # mov eax,0x40000027; syscall; ret
}
wrong = {}
for name, code in CODES.items():
    p = subprocess.run([sys.executable, "-c", CHILD, code], capture_output=True, text=True)
    # gVisor implements neither ABI: the call fails with an error and runs nothing.
    failed = GVISOR and p.returncode == 0 and p.stdout.strip().startswith("returned -")
    if p.returncode != -signal.SIGSYS and not failed:
        wrong[name] = (p.returncode, p.stdout.strip())
assert not wrong, f"foreign ABI calls not stopped: {wrong}"
print("PASS")
"""

PROBES: dict[str, tuple[str, str]] = {
    "refused_syscalls_fail_politely": ("python", _REFUSED_PROBE),
    "clone_with_namespace_flags_is_refused": ("python", _CLONE_PROBE),
    "foreign_abis_are_closed": ("python", _FOREIGN_ABI_PROBE),
    "bash_unshare_user_namespace_is_refused": (
        "bash",
        "out=$(unshare --user true 2>&1)\n"
        'case "$out" in *"Operation not permitted"*) echo PASS;;\n'
        '  *) echo "got: $out"; exit 1;; esac',
    ),
}

_PYTEST_SUITE = r"""
set -eu
mkdir -p /tmp/suite && cd /tmp/suite
cat > conftest.py <<'EOF'
import pytest

@pytest.fixture
def numbers():
    return [3, 1, 2]
EOF
cat > test_sample.py <<'EOF'
import subprocess
import pytest

def test_sorted(numbers):
    assert sorted(numbers) == [1, 2, 3]

@pytest.mark.parametrize("n", [1, 2, 3])
def test_square_is_positive(n):
    assert n * n > 0

def test_tmp_file(tmp_path):
    f = tmp_path / "data.txt"
    f.write_text("hello")
    assert str(tmp_path).startswith("/tmp/") and f.read_text() == "hello"

def test_subprocess():
    assert subprocess.run(["echo", "hi"], capture_output=True, text=True).stdout == "hi\n"

def test_raises():
    with pytest.raises(ZeroDivisionError):
        1 / 0
EOF
python3 -m pytest -q -p no:cacheprovider
echo PASS
"""

_NODE_TEST = r"""
set -eu
mkdir -p /tmp/nodetest && cd /tmp/nodetest
cat > sample.test.mjs <<'EOF'
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile, readFile, mkdtemp } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import { Worker } from 'node:worker_threads';

test('arithmetic', () => { assert.equal(1 + 1, 2); });
test('timers and promises', async () => {
  const v = await new Promise((resolve) => setTimeout(() => resolve(42), 10));
  assert.equal(v, 42);
});
test('files under /tmp', async () => {
  const dir = await mkdtemp('/tmp/nt-');
  await writeFile(`${dir}/f.txt`, 'hello');
  assert.equal(await readFile(`${dir}/f.txt`, 'utf8'), 'hello');
});
test('child process', () => {
  assert.equal(execFileSync('echo', ['hi']).toString(), 'hi\n');
});
test('worker thread', async () => {
  const w = new Worker('require("worker_threads").parentPort.postMessage(7)', { eval: true });
  const msg = await new Promise((resolve) => w.on('message', resolve));
  assert.equal(msg, 7);
});
EOF
node --test
echo PASS
"""

_THREADS_AND_PROCESSES = r"""
import concurrent.futures, multiprocessing, operator, threading

def square(x):
    return x * x

counter = 0
lock = threading.Lock()

def bump():
    global counter
    for _ in range(1000):
        with lock:
            counter += 1

threads = [threading.Thread(target=bump) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert counter == 8000, counter

with concurrent.futures.ThreadPoolExecutor(4) as ex:
    assert list(ex.map(square, range(10))) == [x * x for x in range(10)]

if __name__ == "__main__":
    with multiprocessing.get_context("fork").Pool(2) as pool:
        assert pool.map_async(square, range(20)).get(60) == [x * x for x in range(20)]
    # spawned children re-import __main__, which `python -c` lacks: map a stdlib function.
    for method in ("spawn", "forkserver"):
        with multiprocessing.get_context(method).Pool(2) as pool:
            assert pool.map_async(operator.neg, range(5)).get(60) == [0, -1, -2, -3, -4]
    q = multiprocessing.Queue()
    p = multiprocessing.Process(target=q.put, args=("hi",))
    p.start()
    assert q.get(timeout=10) == "hi"
    p.join()
    print("PASS")
"""

_BASH_PIPELINES = r"""
set -euo pipefail
[ "$(seq 1 1000 | sort -rn | head -3 | tr '\n' ' ')" = "1000 999 998 " ]
[ "$(printf 'b\na\nb\n' | sort | uniq -c | awk '{print $1 $2}' | paste -sd,)" = "1a,2b" ]
[ "$(echo hello | (read -r w; echo "${w^^}"))" = "HELLO" ]
diff <(seq 3) <(printf '1\n2\n3\n')
cd /tmp && mkdir -p pipes && cd pipes && seq 5 | xargs -I{} touch f{} && [ "$(ls | wc -l)" = 5 ]
sleep 0.1 & wait $!
out=$(find /tmp/pipes -name 'f*' | xargs cat | wc -c) && [ "$out" = 0 ]
[ "$(python3 -c 'print(6*7)' | node -e 'process.stdin.on("data", d => console.log(+d + 1))')" = 43 ]
echo PASS
"""

_VENV_PIP_WHEEL = r"""
import base64, hashlib, os, subprocess, sys, zipfile

def record_hash(data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"sha256={digest.decode()},{len(data)}"

files = {
    "tinypkg/__init__.py": b"VALUE = 42\n",
    "tinypkg-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinypkg\nVersion: 0.1\n",
    "tinypkg-0.1.dist-info/WHEEL": (
        b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    ),
}
record = "".join(f"{name},{record_hash(data)}\n" for name, data in files.items())
record += "tinypkg-0.1.dist-info/RECORD,,\n"
os.makedirs("/tmp/wheels", exist_ok=True)
wheel = "/tmp/wheels/tinypkg-0.1-py3-none-any.whl"
with zipfile.ZipFile(wheel, "w") as z:
    for name, data in files.items():
        z.writestr(name, data)
    z.writestr("tinypkg-0.1.dist-info/RECORD", record)

env = dict(os.environ, HOME="/tmp", PIP_NO_CACHE_DIR="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
subprocess.run([sys.executable, "-m", "venv", "/tmp/v"], check=True, env=env)
subprocess.run(
    ["/tmp/v/bin/pip", "install", "--no-index", wheel],
    check=True, env=env, stdout=subprocess.DEVNULL,
)
out = subprocess.run(
    ["/tmp/v/bin/python", "-c", "import tinypkg; print(tinypkg.VALUE)"],
    check=True, env=env, capture_output=True, text=True,
).stdout
assert out == "42\n", out
print("PASS")
"""

_GIT_COMMIT = r"""
set -eu
export HOME=/tmp
mkdir -p /tmp/repo && cd /tmp/repo
git init -q
echo hello > greeting.txt
git add greeting.txt
git -c user.name=sandbox -c user.email=sandbox@example.invalid commit -qm "first commit"
echo bye >> greeting.txt
git -c user.name=sandbox -c user.email=sandbox@example.invalid commit -qam "second commit"
[ "$(git log --oneline | wc -l)" = 2 ]
git diff HEAD~1 --stat | grep -q '1 file changed'
echo PASS
"""

_ASYNCIO_TCP = r"""
import asyncio

async def handle(reader, writer):
    data = await reader.readline()
    writer.write(data.upper())
    await writer.drain()
    writer.close()
    await writer.wait_closed()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        replies = []
        for word in ("ping", "pong"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(word.encode() + b"\n")
            await writer.drain()
            replies.append((await reader.readline()).decode().strip())
            writer.close()
            await writer.wait_closed()
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, sum, [1, 2, 3]) == 6
    assert replies == ["PING", "PONG"], replies

asyncio.run(main())
print("PASS")
"""

WORKLOADS: dict[str, tuple[str, str]] = {
    "pytest_suite_with_fixtures_and_tmp_files": ("bash", _PYTEST_SUITE),
    "node_test_runner": ("bash", _NODE_TEST),
    "python_threads_and_multiprocessing": ("python", _THREADS_AND_PROCESSES),
    "bash_pipelines": ("bash", _BASH_PIPELINES),
    "venv_pip_install_local_wheel": ("python", _VENV_PIP_WHEEL),
    "git_init_and_commit": ("bash", _GIT_COMMIT),
    "asyncio_tcp_on_loopback": ("python", _ASYNCIO_TCP),
    "node_runs": ("javascript", "console.log(require('os').cpus().length > 0 ? 'PASS' : 'no')"),
}


async def _assert_passed(client: Client, language: str, code: str) -> None:
    """Run ``code`` through the real `run_code` tool: the server's spec and profile.

    A Python probe's ``GVISOR`` says whether it runs under runsc, where a few answers differ.
    """
    if language == "python":
        code = f"GVISOR = {RUNTIME == 'runsc'}\n{code}"
    result = await call(client, "run_code", language=language, code=code, timeout_s=120)
    lines = result["stdout"].strip().splitlines()
    assert result["exit_code"] == 0 and lines and lines[-1] == PASS, (
        f"exit {result['exit_code']}\nstdout:\n{result['stdout'][-3000:]}\n"
        f"stderr:\n{result['stderr'][-3000:]}"
    )


@pytest.mark.parametrize("name", sorted(PROBES))
async def test_probe_is_refused_as_expected(client: Client, name: str) -> None:
    await _assert_passed(client, *PROBES[name])


@pytest.mark.parametrize("name", sorted(WORKLOADS))
async def test_workload_runs_under_profile(client: Client, name: str) -> None:
    await _assert_passed(client, *WORKLOADS[name])


def test_every_refused_syscall_is_probed() -> None:
    refused = refused_syscalls(load_source(REPO_ROOT / "seccomp" / "profile.toml"))
    assert refused - NOT_ON_X86_64 == set(REFUSED_X86_64_CALLS)
