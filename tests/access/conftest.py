"""Access tests: a certificate authority and a server certificate made per run, a real endpoint process."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.processes import LoggedProcess
from tests.support.services import RedisServer, free_port, wait_until
from tests.support.worker import embedded_environment


@dataclass(frozen=True)
class Tls:
    """A test CA and a server certificate for 127.0.0.1 and localhost signed by it."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        """What a client trusting only the test CA verifies with."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """Generate the CA and the server certificate (EC P-256: fast to make)."""
    directory = tmp_path_factory.mktemp("tls")
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("panic-metrics test CA"))
        .issuer_name(_name("panic-metrics test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = Tls(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(_pem(server_key))
    return files


class Endpoint(LoggedProcess):
    """`panic-metrics serve-metrics` on a free port, on the embedded default, with the environment given."""

    stop_timeout = 15.0

    def __init__(self, env: Mapping[str, str], workdir: Path) -> None:
        self.port = free_port()
        base = {
            "METRICS_HOST": "127.0.0.1",
            "METRICS_PORT": str(self.port),
            "PROMETHEUS_MULTIPROC_DIR": str(workdir / "prometheus_multiproc"),
            **embedded_environment(workdir),
        }
        (workdir / "prometheus_multiproc").mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "app.cli", "serve-metrics"]
        super().__init__(argv, {**base, **env}, workdir / f"endpoint-{self.port}.log")

    def exited(self) -> int | None:
        """The exit code once the process has ended, else None."""
        return None if self.process is None else self.process.poll()

    def wait_ready(self, base_url: str, verify: ssl.SSLContext | bool = True) -> None:
        def answers() -> bool:
            if self.exited() is not None:
                raise RuntimeError(f"endpoint exited with {self.exited()}; log:\n{self.log()[-3000:]}")
            try:
                return httpx.get(f"{base_url}/health", verify=verify, timeout=5).status_code in {200, 503}
            except httpx.HTTPError:
                return False

        wait_until(answers, timeout=60, what=f"the endpoint at {base_url} (log: {self.log_path})")


EndpointFactory = Callable[[Mapping[str, str]], Endpoint]


@pytest.fixture
def start_endpoint(tmp_path: Path) -> Iterator[EndpointFactory]:
    """Start `panic-metrics serve-metrics` processes (not waited for); all are stopped afterwards."""
    started: list[Endpoint] = []

    def start(env: Mapping[str, str]) -> Endpoint:
        endpoint = Endpoint(env, tmp_path / f"endpoint{len(started)}")
        started.append(endpoint)
        endpoint.start_process()
        return endpoint

    yield start
    for endpoint in started:
        endpoint.stop()


class AuthRedisServer(RedisServer):
    """A redis-server that wants a password for its default user and has an ACL user of its own; TLS if given."""

    def __init__(
        self, directory: Path, *, password: str, user: str, user_password: str, tls: Tls | None = None
    ) -> None:
        super().__init__(directory)
        self.password, self.user, self.user_password, self.tls = password, user, user_password, tls

    def url_for(self, user: str, password: str, db: int = 0) -> str:
        """A URL with credentials, password percent-encoded as a URL needs."""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        acl = f"{self.user} on >{self.user_password} ~* &* +@all"
        argv = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        argv += ["--requirepass", self.password, "--user", *acl.split()]
        if self.tls is None:
            argv += ["--port", str(self.port)]
        else:
            argv += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            argv += ["--tls-cert-file", str(self.tls.cert_file), "--tls-key-file", str(self.tls.key_file)]
            argv += ["--tls-ca-cert-file", str(self.tls.ca_file)]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._answers, timeout=10, what=f"redis-server on port {self.port}")

    def _answers(self) -> bool:
        try:
            with contextlib.ExitStack() as stack:
                sock = stack.enter_context(socket.create_connection(("127.0.0.1", self.port), timeout=0.5))
                if self.tls is not None:
                    context = self.tls.client_context()
                    sock = stack.enter_context(context.wrap_socket(sock, server_hostname="127.0.0.1"))
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))  # an answer, even if it wants a password
        except OSError:
            return False


@pytest.fixture
def auth_redis(tmp_path: Path) -> Iterator[AuthRedisServer]:
    """A redis-server with `--requirepass` and an ACL user, stopped afterwards."""
    server = AuthRedisServer(
        tmp_path / "redis", password="default-Pw#4e1f", user="metrics", user_password="acl-Pw/9c2d@x"
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def tls_redis(tmp_path: Path, tls: Tls) -> Iterator[AuthRedisServer]:
    """The same, reached only over TLS with the test CA's server certificate."""
    server = AuthRedisServer(
        tmp_path / "redis-tls", password="tls-default-Pw%2b", user="metrics", user_password="tls-acl-Pw:71", tls=tls
    )
    server.start()
    yield server
    server.stop()
