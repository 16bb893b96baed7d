"""kombu's Redis transport, taking each message and recording it as unacknowledged in one atomic step.

kombu's own transport fetches with `BRPOP` and then, in a second round trip,
writes the message into the `unacked` hash that the visibility timeout
restores from. A worker killed between the two (SIGKILL, the OOM killer, a
host lost), or one that drops a reply still in its socket at shutdown,
loses the message: it is neither in its queue nor in `unacked`
(kombu #305, celery #4354). Here a Lua script pops the message and records
it in the same server-side step, so from the moment Redis lets go of a
message, the visibility timeout owns it.

A script cannot block, so the channel alternates: claim (the script, which
answers at once) while messages come; after a claim that found nothing,
wait with `BLMOVE key key RIGHT RIGHT timeout`, which wakes when that key
holds a message and moves it back to where it was (it takes nothing), then
claim again. The wait watches the key the last message came from, so the
busy queue is served at once; a message on another queue or priority waits
at most the transport's `brpop_timeout` (1 s). Needs Redis 6.2 or newer.
"""

from __future__ import annotations

import logging
import time
from queue import Empty
from typing import Any

import kombu.transport
import redis
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual.base import QoS as VirtualQoS
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

log = logging.getLogger(__name__)

# KEYS: the queue keys in the order to try, then the unacked hash and its index.
# ARGV[1]: the time to index the message at (the client's clock, as kombu's
# restore scan compares it with the client's clock).
# Returns {key number, message, 1 if recorded else 0}, or nil when every key is empty.
# It records before it pops: a script is not rolled back, and a full
# `noeviction` server refuses the record (a write) but not the pop, so a
# refused claim must have taken nothing.
# kombu stores `[payload, exchange, routing_key]` in the hash; the payload is
# written back byte for byte, never re-encoded (Lua's JSON would round floats).
# A message Lua cannot read (kombu's JSON allows lone surrogates, cjson does
# not) is still taken and handed over unrecorded: the worker then records it
# the way kombu does, no worse than kombu's own transport.
CLAIM_SCRIPT = """
local n = #KEYS
for i = 1, n - 2 do
  local raw = redis.call('LINDEX', KEYS[i], -1)
  if raw then
    local ok, message = pcall(cjson.decode, raw)
    local tag, exchange, routing_key
    if ok and type(message) == 'table' and type(message.properties) == 'table' then
      tag = message.properties.delivery_tag
      local info = message.properties.delivery_info
      if type(info) == 'table' then
        exchange, routing_key = info.exchange, info.routing_key
      end
    end
    if type(tag) ~= 'string' or type(exchange) ~= 'string' or type(routing_key) ~= 'string' then
      redis.call('RPOP', KEYS[i])
      return {i, raw, 0}
    end
    local record = '[' .. raw .. ',' .. cjson.encode(exchange) .. ',' .. cjson.encode(routing_key) .. ']'
    redis.call('ZADD', KEYS[n], ARGV[1], tag)
    redis.call('HSET', KEYS[n - 1], tag, record)
    redis.call('RPOP', KEYS[i])
    return {i, raw, 1}
  end
end
return nil
"""

# After a claim Redis refused (a full server under `noeviction` refuses scripts
# that write), wait this long before the next: nothing was taken, so nothing is
# at risk, and retrying at once would spin.
REFUSED_CLAIM_PAUSE_SECONDS = 1
# A key nothing writes: a blocking pop on it is a pause served by Redis.
PAUSE_KEY = "_panic_metrics.claim_pause"

# Messages popped but not recorded as unacknowledged (see _ClaimingQoS.append):
# held by this process until a channel can push them back. One list for every
# channel, because the channel that popped them is discarded when Celery reconnects.
_UNRECORDED: list[tuple[Any, str, str]] = []


class _ClaimingQoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        channel: Any = self.channel  # kombu's Redis channel (typed as the virtual one)
        if delivery_tag in channel.connection.claimed_tags:
            # The claim script recorded it already: only this process's bookkeeping is left.
            channel.connection.claimed_tags.discard(delivery_tag)
            VirtualQoS.append(self, message, delivery_tag)
            return
        # Taken without the script (a message Lua could not read): recorded the
        # way kombu does, in a second round trip. If Redis goes away between the
        # two, keep it here and push it back once Redis answers again.
        try:
            super().append(message, delivery_tag)
        except channel.connection_errors:
            delivery = message.delivery_info
            _UNRECORDED.append((message._raw, delivery["exchange"], delivery["routing_key"]))
            log.warning("a message was fetched but not recorded as unacknowledged: kept to push back")
            raise

    def ack(self, delivery_tag: str) -> None:
        # A task that finishes after its connection was lost (a Redis restart)
        # is acknowledged on the old, closed channel; kombu then raises
        # AttributeError from `_connparams`, which is not a connection error,
        # and the worker dies ("Unrecoverable error", seen in fault 4). The
        # message stays in Redis's unacked index: the restore scan hands it
        # back after the visibility timeout, and its events are stored once.
        channel: Any = self.channel  # kombu's Redis channel (typed as the virtual one)
        if channel.connection is None:
            log.warning("acknowledgement left to the visibility timeout: the channel's connection is closed")
            VirtualQoS.ack(self, delivery_tag)  # forget it in this process only: no Redis call
            return
        super().ack(delivery_tag)

    def restore_visible(self, *args: Any, **kwargs: Any) -> Any:
        # Called at connect and every restore interval on the live connection.
        self._push_back_unrecorded()
        return super().restore_visible(*args, **kwargs)

    def _push_back_unrecorded(self) -> None:
        channel: Any = self.channel  # kombu's Redis channel (typed as the virtual one)
        while _UNRECORDED:
            payload, exchange, routing_key = _UNRECORDED[0]
            with channel.conn_or_acquire() as client:
                pipe = client.pipeline()
                channel._do_restore_message(payload, exchange, routing_key, pipe, leftmost=True)
                pipe.execute()  # a connection error leaves it in the list for the next call
            _UNRECORDED.pop(0)
            log.warning("a message fetched but not recorded before a broker loss was pushed back")

    def restore_unacked(self, client: Any = None) -> Any:
        # kombu restores a channel's unacknowledged messages when it closes it.
        # After a broker loss Celery closes a connection whose transport has
        # already dropped its client; kombu then raises AttributeError from
        # `_connparams`, which `Connection.maybe_close_channel` does not
        # ignore, and the worker dies with "Unrecoverable error" instead of
        # reconnecting. The messages stay in Redis's unacked index, and the
        # restore scan hands them back after the visibility timeout.
        if client is None and self.channel.connection.client is None:
            log.warning("unacknowledged messages left to the visibility timeout: the connection is already closed")
            return None
        return super().restore_unacked(client)


# celery-types' stubs for kombu leave out the Redis channel's internals this class works with.
_RedisChannel: Any = kombu_redis.Channel


class _ClaimingChannel(_RedisChannel):  # type: ignore[misc]
    QoS = _ClaimingQoS

    # What the command in flight on the consuming connection is: "claim", or
    # "wait" (a wait for a message, or the pause after a refused claim).
    _pending: str | None = None
    # The keys the claim in flight tries, in order, as (queue, key) pairs.
    _claim_keys: list[tuple[str, str]] = []
    # Whether the last claim found every key empty: the next command waits.
    _found_nothing = False
    # The key the last message came from: the one a wait watches.
    _wait_key: str | None = None
    # No claim before this monotonic time (after Redis refused one).
    _claim_paused_until = 0.0
    _claim_sha: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Queues consumed without acknowledgement: their claims are dropped at once.
        self._no_ack_queues: set[str] = set()
        super().__init__(*args, **kwargs)

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        (self._no_ack_queues.add if no_ack else self._no_ack_queues.discard)(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        message = super().basic_get(queue, no_ack=no_ack, **kwargs)
        if message is not None and no_ack:
            self._forget_claim(message.delivery_tag)
        return message

    def _brpop_start(self, timeout: float | None = None) -> None:
        """Send the next claim, or the wait after one that found nothing (in place of kombu's BRPOP)."""
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        keys = [(queue, self._q_for_pri(queue, pri)) for pri in self.priority_steps for queue in queues]
        connection = self.client.connection
        command: list[Any]
        if time.monotonic() < self._claim_paused_until:
            # A blocking pop on a key nothing writes: a pause served by Redis,
            # so the event loop and kombu's health check see a normal reply.
            command = ["BRPOP", self._prefixed(PAUSE_KEY), REFUSED_CLAIM_PAUSE_SECONDS]
            self._pending = "wait"
        elif self._found_nothing:
            watched = self._wait_key if any(key == self._wait_key for _, key in keys) else None
            key = self._prefixed(watched or keys[0][1])
            command = ["BLMOVE", key, key, "RIGHT", "RIGHT", timeout or self.brpop_timeout or 0]
            self._pending = "wait"
        else:
            command = self._claim_command([key for _, key in keys])
            self._claim_keys = keys
            self._pending = "claim"
        self._in_poll = connection
        self._brpop_sent_at = time.monotonic()
        connection.send_command(*command)

    def _brpop_read(self, **options: Any) -> bool:
        """Read the answer to the command in flight; deliver the message a claim took."""
        pending, self._pending = self._pending, None
        try:
            reply = self._read_reply(**options)
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()
        if pending != "claim":
            self._found_nothing = False  # woken, timed out or paused: claim next
            raise Empty()
        if not reply:
            self._found_nothing = True
            raise Empty()
        number, item, recorded = reply
        queue, key = self._claim_keys[number - 1]
        self._wait_key = key
        self._queue_cycle.rotate(queue)
        payload = self._taken(item, recorded)
        if queue in self._no_ack_queues:
            self._forget_claim(payload["properties"]["delivery_tag"])
        self.connection._deliver(payload, queue)
        return True

    def _read_reply(self, **options: Any) -> Any:
        try:
            # redis.Redis's own parse: kombu's prefixing client rewrites BRPOP replies.
            return redis.Redis.parse_response(self.client, self.client.connection, "EVALSHA", **options)
        except self.connection_errors:
            # Disconnect so the next iteration reconnects, as kombu does.
            self.client.connection.disconnect()
            raise
        except redis.exceptions.NoScriptError:
            # Redis restarted or its scripts were flushed: nothing ran, nothing was taken.
            self._claim_sha = None
            raise Empty() from None
        except redis.exceptions.ResponseError as exc:
            # Refused (a full `noeviction` server refuses scripts that write):
            # nothing ran, nothing was taken. Pause rather than spin.
            self._claim_paused_until = time.monotonic() + REFUSED_CLAIM_PAUSE_SECONDS
            log.warning("Redis refused to hand out messages: nothing taken, trying again shortly: %s", exc)
            raise Empty() from None

    def _poll_error(self, type: str, **options: Any) -> Any:
        if type != "BRPOP":
            return super()._poll_error(type, **options)
        # A claim's message lost with this reply is in the unacked hash: the
        # visibility timeout hands it back.
        self._pending = None
        return redis.Redis.parse_response(self.client, self.client.connection, "EVALSHA", **options)

    def _get(self, queue: str) -> Any:
        """Take one message for `basic_get`, claimed like the consumer's."""
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps]
        with self.conn_or_acquire() as client:
            try:
                reply = self._run_claim(client, keys)
            finally:
                self._maybe_update_queues_expire(client, queue)
        if not reply:
            raise Empty()
        _, item, recorded = reply
        return self._taken(item, recorded)

    def _taken(self, item: bytes, recorded: int) -> Any:
        payload = loads(bytes_to_str(item))
        if recorded:
            self.connection.claimed_tags.add(payload["properties"]["delivery_tag"])
        else:
            log.warning("a message the claim script could not read was taken unrecorded; recording it now")
        return payload

    def _forget_claim(self, delivery_tag: str) -> None:
        # A consumer that never acknowledges: drop the claim's record, as
        # kombu keeps none for it.
        self.connection.claimed_tags.discard(delivery_tag)
        self.qos._remove_from_indices(delivery_tag).execute()

    def _claim_command(self, keys: list[str], client: Any = None) -> list[Any]:
        """The claim over `keys`, tried in order: EVALSHA with every key prefixed, the unacked hash and index last."""
        names = [self._prefixed(key) for key in (*keys, self.unacked_key, self.unacked_index_key)]
        return ["EVALSHA", self._script_sha(client), len(names), *names, repr(time.time())]

    def _run_claim(self, client: Any, keys: list[str]) -> Any:
        # redis.Redis's own execute_command: kombu's prefixing client would
        # prefix the first key again (the claim's names carry the prefix already).
        try:
            return redis.Redis.execute_command(client, *self._claim_command(keys, client))
        except redis.exceptions.NoScriptError:
            self._claim_sha = None
            return redis.Redis.execute_command(client, *self._claim_command(keys, client))

    def _script_sha(self, client: Any = None) -> str:
        if self._claim_sha is None:
            loader = client if client is not None else self.client
            self._claim_sha = bytes_to_str(redis.Redis.execute_command(loader, "SCRIPT", "LOAD", CLAIM_SCRIPT))
        return self._claim_sha

    def _prefixed(self, key: str) -> str:
        return f"{self.global_keyprefix or ''}{key}"


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport: messages taken and recorded in one step; survives closing a lost connection."""

    Channel = _ClaimingChannel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Delivery tags the claim script recorded in Redis, until QoS.append sees them.
        self.claimed_tags: set[str] = set()


def use_robust_redis_transport() -> None:
    """Make `redis://` and `rediss://` URLs use RedisTransport in this process.

    kombu picks the transport class from the URL's scheme through this table,
    overriding Celery's `broker_transport`; the table is the one hook.
    """
    for scheme in ("redis", "rediss"):
        TRANSPORT_ALIASES[scheme] = f"{__name__}:RedisTransport"
        # kombu caches the class it resolved for a name: a `redis://` connection
        # made earlier in this process would keep kombu's own transport.
        vars(kombu.transport)["_transport_cache"].pop(scheme, None)  # private, and left out of the stubs
