"""A TCP proxy in front of PostgreSQL that can lose the answer to a COMMIT: an in-doubt commit, on demand.

Armed, it forwards the next `COMMIT` to the server, waits for the server's
answer (so the transaction is committed for sure), and then closes the
client's connection instead of passing the answer on: the client sees its
connection drop during COMMIT, exactly as when a network fails at that
instant. Needs a client that negotiates neither SSL nor GSS encryption
(`sslmode=disable&gssencmode=disable`), so every message after the startup
packet is a typed protocol message.
"""

from __future__ import annotations

import socket
import struct
import threading
from contextlib import suppress

from tests.support.services import free_port


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


class CommitDroppingProxy:
    """Listens on 127.0.0.1:`port` and relays to `target`; `arm()` makes the next COMMIT's answer vanish."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._armed = threading.Event()
        self.dropped = threading.Event()
        self._refusing = threading.Event()
        self._then_refuse = False
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> CommitDroppingProxy:
        self._thread.start()
        return self

    def arm(self, *, then_refuse: bool = False) -> None:
        """Lose the answer to the next COMMIT that goes through; then refuse new connections if asked."""
        self.dropped.clear()
        self._then_refuse = then_refuse
        self._armed.set()

    def refuse(self, refusing: bool) -> None:
        """Close new connections at once (the database unreachable), or accept them again."""
        (self._refusing.set if refusing else self._refusing.clear)()

    def stop(self) -> None:
        self._stop.set()
        with suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._refusing.is_set():
                client.close()
                continue
            server = socket.create_connection(self.target)
            commit_sent = threading.Event()
            threading.Thread(target=self._client_to_server, args=(client, server, commit_sent), daemon=True).start()
            threading.Thread(target=self._server_to_client, args=(server, client, commit_sent), daemon=True).start()

    def _client_to_server(self, client: socket.socket, server: socket.socket, commit_sent: threading.Event) -> None:
        try:
            (length,) = struct.unpack("!I", _read_exact(client, 4))
            server.sendall(struct.pack("!I", length) + _read_exact(client, length - 4))  # the startup packet
            while True:
                header = _read_exact(client, 5)
                body = _read_exact(client, struct.unpack("!I", header[1:])[0] - 4)
                if header[:1] == b"Q" and body.rstrip(b"\0").strip().upper() == b"COMMIT" and self._armed.is_set():
                    self._armed.clear()
                    commit_sent.set()
                server.sendall(header + body)
        except (ConnectionError, OSError):
            for sock in (client, server):
                with suppress(OSError):
                    sock.close()

    def _server_to_client(self, server: socket.socket, client: socket.socket, commit_sent: threading.Event) -> None:
        try:
            while True:
                header = _read_exact(server, 5)
                body = _read_exact(server, struct.unpack("!I", header[1:])[0] - 4)
                if commit_sent.is_set():
                    if header[:1] == b"Z":  # ReadyForQuery after COMMIT: the server has committed
                        if self._then_refuse:
                            self._refusing.set()
                        self.dropped.set()
                        raise ConnectionError("answer to COMMIT dropped")
                    continue
                client.sendall(header + body)
        except (ConnectionError, OSError):
            for sock in (client, server):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
