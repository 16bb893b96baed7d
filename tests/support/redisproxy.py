"""A TCP proxy in front of redis-server that kills its client on the reply carrying a marker: a death, on demand.

Everything is relayed unchanged in both directions until the proxy is armed
with a marker (bytes, e.g. a task id, which a message's headers carry as
plain text) and a callback. The first time the marker passes from the
server to a client, the chunk that completes it is not relayed: the proxy
calls the callback (which kills the client and waits until it is dead),
then closes that connection on both sides. At that moment Redis has
already executed the command whose reply carries the message, and the
client never saw the reply: the instant after a fetch that a worker dying
(SIGKILL, the OOM killer, a host lost) can hit, without timing luck.

It reads replies as bytes and knows nothing of RESP: the marker is found
wherever it falls, also across the boundary of two recv() chunks (the
part before the boundary has then been relayed, but a client cannot act
on half a reply).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from contextlib import suppress
from types import TracebackType

from tests.support.services import free_port

# The longest marker the proxy looks for: each direction keeps this much of
# what it relayed last, to find a marker split across two chunks.
MAX_MARKER = 1024
CHUNK = 65536


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with suppress(OSError):
            sock.close()


class ReplyKillingProxy:
    """Listens on 127.0.0.1:`port` and relays to redis-server at `target`; `arm()` sets the marker and the kill.

    `found` is set when a reply carrying the marker is held back, `fired`
    once the callback has returned; `held_back` is the chunk not relayed,
    and `error` whatever the callback raised.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.found = threading.Event()
        self.fired = threading.Event()
        self.held_back = b""
        self.error: BaseException | None = None
        self._marker: bytes | None = None
        self._on_marker: Callable[[], None] | None = None
        self._let_through = 0
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._silenced: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True, name=f"redisproxy-{self.port}")

    def url(self, db: int = 0) -> str:
        """The redis:// URL a client connects to instead of the server's."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> ReplyKillingProxy:
        self._thread.start()
        return self

    def arm(self, marker: bytes, on_marker: Callable[[], None], *, let_through: int = 0) -> None:
        """Hold back the first server-to-client chunk that completes `marker`, call `on_marker`, drop that link.

        `let_through` occurrences of the marker are relayed first (e.g. a
        reply that shows a message without taking it).
        """
        if not 0 < len(marker) <= MAX_MARKER:
            raise ValueError(f"a marker is 1 to {MAX_MARKER} bytes, not {len(marker)}")
        with self._lock:
            self.found.clear()
            self.fired.clear()
            self.held_back = b""
            self.error = None
            self._marker, self._on_marker, self._let_through = marker, on_marker, let_through

    def silence(self) -> None:
        """Every connection relayed so far goes silent both ways and stays open (a partition without a reset).

        Connections made afterwards are relayed as usual.
        """
        with self._lock:
            self._silenced.update(sock for pair in self._pairs for sock in pair)

    def stop(self) -> None:
        """Stop accepting and close every relayed connection."""
        self._stop.set()
        _close(self._listener)
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            _close(*pair)

    def __enter__(self) -> ReplyKillingProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                _close(client)  # the server is down: so is the proxy, as far as the client can tell
                continue
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._relay, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._relay, args=(server, client, True), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        # The end of what went before, so that a marker split across chunks is found.
        tail = b""
        try:
            while True:
                chunk = source.recv(CHUNK)
                if not chunk:
                    break
                if source in self._silenced:
                    continue  # swallowed: the other side hears nothing, and nothing closes
                on_marker = self._take_arm(tail, chunk) if replies else None
                if on_marker is not None:
                    self._fire(on_marker)
                    break
                sink.sendall(chunk)
                tail = (tail + chunk)[-(MAX_MARKER - 1) :]
        except OSError:
            pass
        _close(source, sink)

    def _take_arm(self, tail: bytes, chunk: bytes) -> Callable[[], None] | None:
        """Disarm and return the callback if the armed marker ends inside `chunk` (it may begin in `tail`)."""
        with self._lock:
            marker, on_marker = self._marker, self._on_marker
            if marker is None or on_marker is None:
                return None
            # Only occurrences that end past the tail: one wholly inside it was
            # relayed before (or before the proxy was armed).
            window = tail + chunk
            at = window.find(marker, max(0, len(tail) - len(marker) + 1))
            while at >= 0 and self._let_through > 0:
                self._let_through -= 1
                at = window.find(marker, at + 1)
            if at < 0:
                return None
            self._marker = self._on_marker = None
            self.held_back = chunk
            self.found.set()
            return on_marker

    def _fire(self, on_marker: Callable[[], None]) -> None:
        try:
            on_marker()
        except Exception as exc:  # noqa: BLE001 - any failure of the kill is reported to the test, which asserts on it
            self.error = exc
        finally:
            self.fired.set()
