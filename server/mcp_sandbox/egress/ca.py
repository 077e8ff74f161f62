"""The per-install CA behind credential injection, and the short-lived certificates it signs.

To put a credential in a request over HTTPS the proxy must read the request, so for the hosts
that have a credential (and only those) it terminates TLS with a leaf certificate for that
one name. The CA that signs the leaves is made at first use and kept where the server keeps
its state (``egress.ca_dir``: the directory 0700, the key 0600). Its key never leaves the
server: the proxy gets only the leaves (a day's validity, for the credential hosts alone),
and a sandbox only the CA *certificate*, in a bundle beside the system roots, mounted
read-only. ``mcp-sandbox ca rotate`` makes a new CA.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mcp_sandbox.errors import SandboxUnavailable

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
CA_LIFETIME = datetime.timedelta(days=3650)
LEAF_LIFETIME = datetime.timedelta(days=1)
# Clocks disagree a little: a leaf is valid from a few minutes before it was made.
_BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class Authority:
    """The CA: its certificate (public) and key (never leaves the server)."""

    cert_pem: str
    key_pem: str

    @property
    def fingerprint(self) -> str:
        der = x509.load_pem_x509_certificate(self.cert_pem.encode()).public_bytes(
            serialization.Encoding.DER
        )
        return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class Leaf:
    """A certificate for one host name, with its key: what the proxy serves that host with."""

    host: str
    cert_pem: str
    key_pem: str
    not_after: datetime.datetime


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def new_authority(now: datetime.datetime | None = None) -> Authority:
    """A fresh CA: P-256, may sign leaves only (path length 0)."""
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    serial = x509.random_serial_number()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mcp-sandbox"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"mcp-sandbox egress CA {serial:x}"[:64]),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(serial)
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), _key_pem(key))


def mint_leaf(ca: Authority, host: str, now: datetime.datetime | None = None) -> Leaf:
    """A leaf for exactly ``host`` (no wildcard), valid for LEAF_LIFETIME."""
    now = now or _now()
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca.key_pem.encode(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = now + LEAF_LIFETIME
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return Leaf(host, pem, _key_pem(key), not_after)


def _write_private(path: Path, text: str, mode: int) -> None:
    """``text`` to ``path`` atomically, created with ``mode`` (never wider for a moment)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _private_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Servers sharing a state dir make one CA, never a key of one beside another's cert."""
    _private_dir(directory)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def load_or_create(directory: Path) -> Authority:
    """The CA in ``directory``; made there at first use. Raises SandboxUnavailable."""
    try:
        with _locked(directory):
            key_path, cert_path = directory / CA_KEY, directory / CA_CERT
            if key_path.exists() and cert_path.exists():
                if key_path.stat().st_mode & 0o077:
                    os.chmod(key_path, 0o600)
                ca = Authority(cert_path.read_text("ascii"), key_path.read_text("ascii"))
                x509.load_pem_x509_certificate(ca.cert_pem.encode())
                return ca
            return _store(directory, new_authority())
    except (OSError, ValueError) as e:
        raise SandboxUnavailable(
            f"the egress CA in {directory} cannot be read or made ({type(e).__name__}); "
            "check egress.ca_dir, or run `mcp-sandbox ca rotate`"
        ) from e


def _store(directory: Path, ca: Authority) -> Authority:
    # Key first: a certificate on disk always has its key beside it.
    _write_private(directory / CA_KEY, ca.key_pem, 0o600)
    _write_private(directory / CA_CERT, ca.cert_pem, 0o644)
    return ca


def rotate(directory: Path) -> Authority:
    """A new CA in ``directory``, replacing the old one. Raises OSError."""
    with _locked(directory):
        return _store(directory, new_authority())


def system_roots() -> str:
    """The host's trusted roots as PEM text: OpenSSL's default file, else certifi's (a server
    in a slim container may have only that); "" when there are none."""
    paths = ssl.get_default_verify_paths()
    candidates = [paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"]
    with contextlib.suppress(ImportError):
        import certifi  # optional: not a dependency of ours

        candidates.append(certifi.where())
    for candidate in candidates:
        if candidate and os.path.isfile(candidate):
            with contextlib.suppress(OSError, UnicodeDecodeError):
                text = Path(candidate).read_text("ascii")
                if "BEGIN CERTIFICATE" in text:
                    return text
    return ""


def write_bundle(directory: Path, ca: Authority, roots: str) -> Path:
    """The sandboxes' CA bundle: ``roots`` plus our CA, named by the CA's fingerprint (so a
    rotation never changes the trust of sandboxes of a server still serving the old CA)."""
    path = directory / f"bundle-{ca.fingerprint[:16]}.pem"
    text = (roots.rstrip("\n") + "\n" if roots.strip() else "") + ca.cert_pem
    if not path.exists() or path.read_text("ascii") != text:
        _write_private(path, text, 0o644)
    return path
