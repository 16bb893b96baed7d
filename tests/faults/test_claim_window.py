"""The instant after Redis hands a message to a consumer, at the kombu level: a consumer SIGKILLed on that reply.

A consumer process (kombu's `SimpleQueue.get`, no Celery) reads its broker
through `ReplyKillingProxy`, armed on a marker in the message's headers: the
proxy holds back the reply that carries the message, kills the consumer's
process group and waits for it to die. Redis has executed the fetch; the
consumer never saw it. Then a fresh connection restores what is past a
visibility timeout of 0 s and the queue is read.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any, Protocol

import pytest
import redis
from kombu import Connection
from kombu.transport import redis as kombu_redis

from app.redis_transport import RedisTransport
from tests.support.processes import ROOT
from tests.support.redisproxy import ReplyKillingProxy
from tests.support.services import RedisServer, wait_until

QUEUE = "claim-window"

# The consumer: connects (through the proxy) with the transport named by argv[2],
# says which transport class it got, then takes one message from queue argv[3]
# with SimpleQueue's `get` (a consumer: BRPOP, or our claim and wait) or
# `get_nowait` (basic_get) and acknowledges it. A wait lasts argv[5] seconds.
CONSUMER = """
import sys
from kombu import Connection

url, transport, queue_name, method, wait = sys.argv[1:6]
if transport == "ours":
    from app.redis_transport import use_robust_redis_transport
    use_robust_redis_transport()
with Connection(url, transport_options={"brpop_timeout": float(wait)}) as connection:
    queue = connection.SimpleQueue(queue_name)
    print("transport", type(connection.transport).__module__, flush=True)
    message = queue.get(block=True, timeout=120) if method == "get" else queue.get_nowait()
    message.ack()
    print("received", message.headers.get("marker"), flush=True)
"""
# How long an idle consumer's wait lasts: far longer than the test needs to
# publish once it sees the wait, so the wait (not a claim) is what wakes.
LONG_WAIT = 300


def queued(client: redis.Redis) -> list[dict[str, Any]]:
    """The messages waiting in the queue, oldest first (kombu pushes left and pops right)."""
    return [json.loads(raw) for raw in reversed(client.lrange(QUEUE, 0, -1))]


def without_redelivered(message: dict[str, Any]) -> dict[str, Any]:
    """A message as published: kombu's restore marks what it hands back as redelivered, and changes nothing else."""
    copy = json.loads(json.dumps(message))
    copy["headers"].pop("redelivered", None)
    copy["properties"]["delivery_info"].pop("redelivered", None)
    return copy


class KilledConsumer(Protocol):
    def __call__(
        self, transport: str, *, method: str = "get", idle: bool = False
    ) -> tuple[RedisServer, dict[str, Any], str]: ...


@pytest.fixture
def consumer_killed_on_its_message(
    private_redis: Callable[..., RedisServer], tmp_path: Path
) -> Iterator[KilledConsumer]:
    """Run a consumer with the transport given, killed on the reply that takes its one message.

    By default the message is queued before the consumer starts, so its
    very first fetch takes it. `idle`: the message is published once the
    consumer waits on an empty queue (our transport: BLMOVE, whose reply
    shows the message but leaves it queued, is let through; the claim that
    follows is the reply that kills). Returns the Redis server, the message
    as published, and the consumer's output.
    """
    started: list[subprocess.Popen[bytes]] = []
    proxies: list[ReplyKillingProxy] = []

    def run(transport: str, *, method: str = "get", idle: bool = False) -> tuple[RedisServer, dict[str, Any], str]:
        server = private_redis()
        client = redis.Redis.from_url(server.url)
        marker = f"claim-window-{uuid.uuid4().hex}"

        def publish() -> dict[str, Any]:
            # kombu publishes into database 1 of the same server, where nothing
            # consumes; its bytes are then pushed as they are into the consumer's
            # queue in database 0 (a message names its exchange and routing key,
            # not its database). So the test knows the message as published even
            # when a waiting consumer takes it at once. Straight to Redis, not
            # through the proxy.
            staging = f"redis://127.0.0.1:{server.port}/1"
            with Connection(staging, transport=kombu_redis.Transport) as publisher:
                publisher.SimpleQueue(QUEUE).put({"n": 1}, headers={"marker": marker})
            raw = redis.Redis.from_url(staging).rpop(QUEUE)
            assert isinstance(raw, bytes)
            published: dict[str, Any] = json.loads(raw)
            assert marker not in published["body"], "the marker must be in plain text, not in the encoded body"
            client.lpush(QUEUE, raw)
            return published

        if not idle:
            published = publish()
        proxy = ReplyKillingProxy("127.0.0.1", server.port).start()
        proxies.append(proxy)
        log_path = tmp_path / f"consumer-{transport}-{method}.log"
        with log_path.open("ab") as log:
            consumer = subprocess.Popen(
                [sys.executable, "-c", CONSUMER, proxy.url(), transport, QUEUE, method, str(LONG_WAIT)],
                cwd=ROOT,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a process group of its own, killed whole
            )
        started.append(consumer)

        def kill_consumer() -> None:
            os.killpg(consumer.pid, signal.SIGKILL)
            consumer.wait(timeout=10)

        proxy.arm(marker.encode(), kill_consumer, let_through=1 if idle else 0)
        if idle:
            wait_until(
                lambda: client.info("clients")["blocked_clients"] == 1 or consumer.poll() is not None,
                timeout=60,
                what="the consumer waiting on the empty queue",
            )
            published = publish()
        wait_until(
            lambda: proxy.found.is_set() or consumer.poll() is not None,
            timeout=60,
            what=f"the reply taking the message (consumer log: {log_path})",
        )
        assert proxy.found.is_set(), f"the consumer ended before its message reached it:\n{log_path.read_text()}"
        assert proxy.fired.wait(30), "the consumer was not killed"
        output = log_path.read_text()
        assert proxy.error is None, proxy.error
        assert consumer.returncode == -signal.SIGKILL
        assert "received" not in output, output
        # Nothing restores while the dead consumer holds kombu's restore mutex
        # (it never does here: it was waiting for its fetch).
        assert not client.exists("unacked_mutex")
        return server, published, output

    yield run
    for proxy in proxies:
        proxy.stop()
    for consumer in started:
        if consumer.poll() is None:
            os.killpg(consumer.pid, signal.SIGKILL)
            consumer.wait(timeout=10)


def restore_past_visibility_timeout(url: str, transport: type[Any]) -> None:
    """What any live consumer's periodic scan does, at once: hand back what is past a visibility timeout of 0 s."""
    with Connection(url, transport=transport, transport_options={"visibility_timeout": 0}) as connection:
        connection.default_channel.qos.restore_visible()


@pytest.mark.integration
@pytest.mark.parametrize(
    ("method", "idle"),
    [("get", False), ("get", True), ("get_nowait", False)],
    ids=["consumer-busy", "consumer-woken-from-wait", "basic-get"],
)
def test_consumer_killed_on_the_reply_that_claims_its_message_gets_it_back_once(
    consumer_killed_on_its_message: KilledConsumer, method: str, idle: bool
) -> None:
    """Our transport: the message was recorded as unacknowledged in the step that took it; restored once, unchanged."""
    server, published, output = consumer_killed_on_its_message("ours", method=method, idle=idle)
    assert "transport app.redis_transport" in output, output
    client = redis.Redis.from_url(server.url)
    # The fault hit after Redis let go of the message: it is no longer queued, only recorded.
    assert queued(client) == []
    assert [json.loads(raw)[0] for raw in client.hvals("unacked")] == [published]
    assert client.zcard("unacked_index") == 1

    restore_past_visibility_timeout(server.url, RedisTransport)

    (restored,) = queued(client)
    assert without_redelivered(restored) == published
    assert restored["headers"]["redelivered"] is True
    assert client.hlen("unacked") == client.zcard("unacked_index") == 0
    # A consumer gets it, once, with the body that was published.
    with Connection(server.url, transport=RedisTransport) as connection:
        queue = connection.SimpleQueue(QUEUE)
        message = queue.get(block=True, timeout=30)
        assert message.payload == {"n": 1}
        assert message.headers["marker"] == published["headers"]["marker"]
        message.ack()
        with pytest.raises(queue.Empty):
            queue.get_nowait()
    assert queued(client) == []
    assert client.hlen("unacked") == 0


@pytest.mark.integration
@pytest.mark.parametrize("method", ["get", "get_nowait"], ids=["consumer", "basic-get"])
def test_stock_kombu_transport_loses_a_message_taken_just_before_its_consumer_died(
    consumer_killed_on_its_message: KilledConsumer, method: str
) -> None:
    """kombu's own transport: BRPOP (or RPOP) took the message, the unacked record was never written; it is gone.

    This is kombu #305 / celery #4354, the reason app/redis_transport.py
    exists, and the proof that the proxy hits the window that matters. If
    this test starts failing because the message survives, kombu has fixed
    the gap: drop our transport and go back to kombu's.
    """
    server, _published, output = consumer_killed_on_its_message("stock", method=method)
    assert "transport kombu.transport.redis" in output, output
    client = redis.Redis.from_url(server.url)

    restore_past_visibility_timeout(server.url, kombu_redis.Transport)

    assert queued(client) == []
    assert client.hlen("unacked") == client.zcard("unacked_index") == 0


# --- the proxy itself -------------------------------------------------------


class _ScriptedServer:
    """A TCP server that answers its one client with the chunks a test sends, when the test says."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = b""
        self._connection: socket.socket | None = None
        self._accepted = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            self._connection, _ = self.listener.accept()
            self._accepted.set()
            while chunk := self._connection.recv(4096):
                self.received += chunk
        except OSError:  # closed by the test's teardown
            return

    def send(self, data: bytes) -> None:
        assert self._accepted.wait(10)
        assert self._connection is not None
        self._connection.sendall(data)

    def close(self) -> None:
        for sock in (self._connection, self.listener):
            if sock is not None:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


@pytest.fixture
def scripted() -> Iterator[tuple[_ScriptedServer, ReplyKillingProxy]]:
    server = _ScriptedServer()
    proxy = ReplyKillingProxy("127.0.0.1", server.port).start()
    yield server, proxy
    proxy.stop()
    server.close()


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_proxy_relays_both_ways_unchanged_until_the_marker(scripted: tuple[_ScriptedServer, ReplyKillingProxy]) -> None:
    """Armed on a marker that never comes, the proxy changes nothing in either direction."""
    server, proxy = scripted
    calls: list[str] = []
    proxy.arm(b"never-sent", lambda: calls.append("fired"))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as client:
        client.sendall(b"*1\r\n$4\r\nPING\r\n")
        wait_until(lambda: server.received == b"*1\r\n$4\r\nPING\r\n", timeout=10, what="the command relayed")
        server.send(b"+PONG\r\n")
        assert client.recv(4096) == b"+PONG\r\n"
    assert calls == []
    assert not proxy.fired.is_set()


def test_proxy_finds_a_marker_split_across_two_chunks(scripted: tuple[_ScriptedServer, ReplyKillingProxy]) -> None:
    """A marker split over two recv() chunks fires once: the chunk that completes it is held back, the link closed."""
    server, proxy = scripted
    calls: list[str] = []
    proxy.arm(b"task-1234", lambda: calls.append("fired"))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as client:
        server.send(b"$20\r\nheaders: task-")
        # The first half has reached the client before the second is sent: two chunks for the proxy.
        assert client.recv(4096) == b"$20\r\nheaders: task-"
        server.send(b"1234 end\r\n")
        assert proxy.fired.wait(10)
        assert _read_until_closed(client) == b""  # the rest never arrives; the connection is closed
    assert calls == ["fired"]
    assert proxy.held_back == b"1234 end\r\n"
    assert proxy.error is None


def test_proxy_does_not_fire_on_a_marker_relayed_before_it_was_armed(
    scripted: tuple[_ScriptedServer, ReplyKillingProxy],
) -> None:
    """A marker that passed before `arm()` is not found again in the next chunk's look-back."""
    server, proxy = scripted
    calls: list[str] = []
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as client:
        server.send(b"task-1234")
        assert client.recv(4096) == b"task-1234"
        proxy.arm(b"task-1234", lambda: calls.append("fired"))
        server.send(b"+OK\r\n")
        assert client.recv(4096) == b"+OK\r\n"
        server.send(b"task-1234")  # a fresh occurrence fires
        assert proxy.fired.wait(10)
    assert calls == ["fired"]


def test_proxy_lets_the_occurrences_asked_through_then_fires(
    scripted: tuple[_ScriptedServer, ReplyKillingProxy],
) -> None:
    """`let_through=1`: the first reply carrying the marker is relayed, the second is held back."""
    server, proxy = scripted
    calls: list[str] = []
    proxy.arm(b"task-1234", lambda: calls.append("fired"), let_through=1)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as client:
        server.send(b"$9\r\ntask-1234\r\n")
        assert client.recv(4096) == b"$9\r\ntask-1234\r\n"
        assert not proxy.fired.is_set()
        server.send(b"*3\r\n:1\r\n$9\r\ntask-1234\r\n:1\r\n")
        assert proxy.fired.wait(10)
        assert _read_until_closed(client) == b""
    assert calls == ["fired"]
