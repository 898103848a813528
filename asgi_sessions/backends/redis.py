"""RedisBackend: server-side sessions on redis-py's asyncio client.

Data model (all keys under ``prefix``, default ``asgi_sessions:``)::

    {prefix}s:<sha256(token) hex>     HASH, one per session (or grace alias)
        m            msgpack map: c created, r last rotation (epoch seconds), and only
                     when set: i idle override, f fixed expiry, b browser session, u user,
                     d the score its user's index holds for it
        s            msgpack array: [last seen, client address, user agent]
        t            when the next sliding refresh is due (epoch seconds, plain text)
        z            "period idle cap": refresh period and idle timeout in seconds and
                     the hard deadline; t and z are absent when the expiry never slides
        a            only on a grace alias: the ID of the session it was rotated into
        p            only on a session rotated from another with a grace: that ID (its
                     alias while the grace lasts, which ends with it: see _end)
        <msgpack(key)>  one field per session key, named by the key's msgpack encoding
                     (a first byte >= 0xa0, which no field above has), value in msgpack
        x            the view: [m, s, next refresh due, alias, {key: value}] as one
                     msgpack document, rebuilt by every write
    {prefix}u:{<sha256(user id)>}     ZSET, the user's session IDs scored by the
                                      latest moment each can still be alive

The cookie holds a 256-bit random token; Redis only ever sees its SHA-256, so a dump
or MONITOR yields no usable cookie. Every key has a TTL: a session's is its idle or
absolute deadline, whichever comes first (browser-session cookies included); an
index's is the latest absolute deadline of its members. TTLs are always relative
(PEXPIRE), so the app servers' clocks and Redis's need not agree.

Round trips: a load is one plain HGET of ``x`` when this process remembers that no
refresh is due yet (a bounded map of session ID -> due time, filled by every load and
save). Otherwise it is one EVALSHA that reads ``x`` and, when ``t`` has passed, folds in
the sliding refresh (new ``s``, ``t``, TTL and view), unless the session is past its
deadline under the settings the load runs with (a deploy may have lowered them). A Lua script costs the server
several times a plain read, which is why the common read avoids one. A stale due time is
harmless: the schedule only moves later, except when another process shortens it, and
then the middleware sees the refresh due in the record and touches. A commit is one
EVALSHA that checks the session still exists and is not an alias, writes only the
changed data fields, the metadata ``m`` (changed or not: the TTL and the refresh
schedule it writes come from it, so they always agree with the stored ``m``, whatever
another request stored since the load) and sets the TTL. A new or replaced record
arrives with its view, built here; so does a delta, built from the view the request
loaded, which the script keeps only if the stored view is still that one (nobody wrote
since), and otherwise leaves out: it merges the delta into what the other requests
stored and rebuilds the view from the fields. So two requests that change different
keys both land; for the same key, and for the metadata as a whole, the last commit
wins. A save or touch that lets a bound session live past the score its user's
index holds for it (``d``: a lifted fixed expiry, a raised absolute_timeout) first
re-scores it there, one more single-key command for that write only; the index key's
TTL follows its highest score.

Size: a save whose view, not counting its ``s`` entry, would be over the serializer's
``max_size`` raises :class:`SessionTooLarge` and writes nothing (a merge checks the
merged view in the script, before it writes). The load accepts a view up to
``max_size`` plus room for the ``s`` entry (address and user agent, each cut to 256
characters), so nothing that was saved is ever refused, and removed, as corrupt.

Caches: the views cache maps a view's bytes to its decoded record fields. A delta save
on a view this request loaded replaces that view's entry with the one of the view it
stored, with the packed pairs of its keys, so the session's next load (whose HGET
returns those very bytes unless another request wrote since) decodes nothing, and its
save packs only the keys it changes.

On a plain or Sentinel client these commands skip redis-py's command layer (see
``_Lane``): one packed write and one read on a pooled connection, bounded by this
backend's watchdog. Everything else, and every command on a Cluster client, goes
through redis-py as usual. A rotation writes the new key, enters it in its user's
index when it has one, and only then turns the old key into a read-only alias: single-key
scripts one after the other (old and new hash to different Cluster slots, so there is
never a cross-slot transaction), in an order that lets a logout or revoke racing the
rotation end the new session too. The new key gets the data the request loaded with its
changes; the retirement checks that the old key's view is still the loaded one and
otherwise, writing nothing, answers the stored view: a parallel request saved since.
The rotation then rewrites the new key with that data and its own delta over it (the
merge a delta save makes) and retires again, so its changes and the parallel ones
both land; this costs two round trips more only when someone did write since the load.
Without a grace period the old key is replaced by a marker that names the new ID, has
no data and reads as no session, for ``operation_timeout``: a retirement retried after
its reply was lost sees that it is done, instead of ending the new session (and a
logout or revoke of the old ID meanwhile ends the new one, as an alias makes it do).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import inspect
import math
import re
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import msgpack
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from asgi_sessions._bounded import make_room
from asgi_sessions._log import logger
from asgi_sessions.backends._tokens import checked_id, new_token, token_id
from asgi_sessions.backends.base import Delta, SessionInfo, SessionRecord
from asgi_sessions.errors import (
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    SerializationError,
    SessionGone,
    SessionTooLarge,
)
from asgi_sessions.events import Emitter, SessionEvent, session_hash
from asgi_sessions.msgpack_serializer import MsgpackSerializer

if TYPE_CHECKING:
    from asgi_sessions.policy import ExpiryPolicy

__all__ = ["RedisBackend"]

T = TypeVar("T")
Client = Redis | RedisCluster

_unpackb = msgpack.unpackb
_CONTAINERS = (list, dict)
# Session values that cannot change in place: the ones a view can be rebuilt from.
_UNCHANGEABLE = frozenset({type(None), bool, int, float, str, bytes, datetime})
# Values that load back equal and of the same type (a datetime loads back in UTC: it
# qualifies only when it is in UTC already, see _loads_back_same).
_ROUND_TRIP = frozenset({type(None), bool, int, float, str, bytes})
# Not a shared Packer: its buffer is not safe to share between threads, and a
# backend may serve apps on several threads' event loops.
_packb = msgpack.packb
# The view: every script that changes a session's hash rebuilds its ``x`` field, one
# msgpack array [m, s, t, alias, {key: value}] made by concatenation (the data
# fields' names and values are already msgpack), so a read is one plain HGET.
_VIEW = """
local function build(h)
  local m, s, t, a = '\\193', '\\193', '\\192', '\\192'
  local parts, n = {}, 0
  for j = 1, #h, 2 do
    local k = h[j]
    if (string.byte(k) or 0) >= 160 then
      parts[n + 1] = k
      parts[n + 2] = h[j + 1]
      n = n + 2
    elseif k == 'm' then m = h[j + 1]
    elseif k == 's' then s = h[j + 1]
    elseif k == 't' then t = cmsgpack.pack(tonumber(h[j + 1]))
    elseif k == 'a' then a = cmsgpack.pack(h[j + 1])
    end
  end
  n = n / 2
  local header
  if n < 16 then header = string.char(128 + n)
  elseif n < 65536 then header = string.char(222, math.floor(n / 256), n % 256)
  else header = string.char(223, math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256) end
  return '\\149' .. m .. s .. t .. a .. header .. table.concat(parts)
end
local function view(key)
  local x = build(redis.call('HGETALL', key))
  -- Best effort: a server out of memory refuses the write; the next writer rebuilds.
  redis.pcall('HSET', key, 'x', x)
  return x
end
"""
# The load when a refresh may be due: the view, and when ``t`` has passed the
# sliding refresh (new ``s``, ``t`` and TTL, and a new view), answered as
# [refreshed, view]. ARGV[1] is now, ARGV[2] the new ``s``, ARGV[3] and ARGV[4] the
# idle and absolute timeouts of the policy the load runs under. ``z`` holds the
# settings of the last write, which a deploy may have lowered since: a session past
# its deadline under the load's policy (ExpiryPolicy.is_expired) is not refreshed, so
# the caller finds it expired and its TTL stays as it was.
_LOAD = (
    _VIEW
    + """
local function alive(m, now)
  local ok, meta = pcall(cmsgpack.unpack, m)
  local ok_seen, seen = pcall(cmsgpack.unpack, redis.call('HGET', KEYS[1], 's') or '')
  if not (ok and ok_seen and type(meta) == 'table' and type(seen) == 'table') then
    return false  -- not ours: nothing is refreshed, and the caller's parse decides
  end
  local idle = tonumber(meta['i']) or tonumber(ARGV[3])
  local last, created, absolute = tonumber(seen[1]), tonumber(meta['c']), tonumber(ARGV[4])
  if not (idle and last and created and absolute) then return false end
  local idle_end = tonumber(meta['f']) or last + idle
  return now < idle_end and now < created + absolute
end
local v = redis.call('HMGET', KEYS[1], 'x', 't', 'z', 'a', 'm')
local x, t, z, a = v[1], v[2], v[3], v[4]
if not x then
  if not v[5] then return false end
  x = view(KEYS[1])  -- a record whose view is missing: rebuilt, not lost
end
local refreshed = '\\194'
local now = tonumber(ARGV[1])
if now and t and z and not a and now >= (tonumber(t) or math.huge) and alive(v[5], now) then
  local period, idle, cap = string.match(z, '^(%S+) (%S+) (%S+)$')
  period, idle, cap = tonumber(period), tonumber(idle), tonumber(cap)
  local deadline = period and idle and cap and math.min(now + idle, cap)
  -- Comparisons that NaN fails: a z that is not ours (nan, inf, a deadline centuries
  -- away, which PEXPIRE refuses) refreshes nothing, and the read goes on.
  if deadline and deadline > now and deadline - now < 1e10 and period > 0 and period < 1e10 then
    -- Best effort: a server out of memory refuses the write, and the read goes on.
    local ok = redis.pcall('HSET', KEYS[1], 's', ARGV[2], 't', tostring(now + period))
    if not (type(ok) == 'table' and ok.err) then
      redis.call('PEXPIRE', KEYS[1], math.ceil((deadline - now) * 1000))
      x = view(KEYS[1])
      refreshed = '\\195'
    end
  end
end
return '\\146' .. refreshed .. x
"""
)
# A save. ARGV: mode (n new, r replace, u delta), TTL in ms, the number of field
# pairs, the view this request loaded ('' when unknown), the size limit of a view
# (not counting its ``s`` entry), the field pairs, then the fields to delete. A new or
# replaced record arrives with its view as its last pair, its size checked by the
# caller. So may a delta, built from the loaded view: it is right only if nobody wrote
# since (the stored view is still the loaded one); otherwise the pair is left out and
# the delta merges into what other requests stored. A merge's view is built before
# anything is written: one over the size limit writes nothing, so no save stores a
# record that the load would refuse.
# Returns 1 saved, 2 saved by a merge (the view was rebuilt), 0 the new key exists
# (holding another record: an ID collision), -1 the session is gone or is a grace
# alias, 3 the merged view would be over the size limit (nothing written).
_SAVE = (
    _VIEW
    + """
-- ARGV[from..to] to the command, 1000 at a time (an even number: HSET's pairs stay
-- whole): unpack() refuses more than about 8000 values, a session of 4000 keys.
local function in_chunks(command, from, to)
  for j = from, to, 1000 do
    redis.call(command, KEYS[1], unpack(ARGV, j, math.min(j + 999, to)))
  end
end
local last = 5 + 2 * tonumber(ARGV[3])
local upto, merged = last, nil
if ARGV[1] == 'n' then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    -- This very create, run twice (a client that lost the reply retried it): done.
    if redis.call('HGET', KEYS[1], 'x') == ARGV[last] then return 1 end
    return 0
  end
else
  local s = redis.call('HMGET', KEYS[1], 'm', 'a', 'x', 'p')
  if not s[1] or s[2] then return -1 end
  if ARGV[1] == 'r' then
    redis.call('DEL', KEYS[1])
    -- The link to the alias it was rotated from outlives a replacement of the data.
    if s[4] then redis.call('HSET', KEYS[1], 'p', s[4]) end
  elseif ARGV[4] == '' or s[3] ~= ARGV[4] then
    if ARGV[4] ~= '' then upto = last - 2 end
    -- The fields as they will be: the stored ones, these pairs over them, and the
    -- deleted ones blanked (a field name the view leaves out).
    local h = redis.call('HGETALL', KEYS[1])
    local at = {}
    for j = 1, #h, 2 do at[h[j]] = j end
    for j = 6, upto, 2 do
      local i = at[ARGV[j]]
      if i then h[i + 1] = ARGV[j + 1] else
        h[#h + 1] = ARGV[j]
        h[#h + 1] = ARGV[j + 1]
        at[ARGV[j]] = #h - 1
      end
    end
    for j = last + 1, #ARGV do
      local i = at[ARGV[j]]
      if i then h[i] = '' end
    end
    merged = build(h)
    local seen = at['s'] and h[at['s'] + 1] or ''
    if #merged - #seen > tonumber(ARGV[5]) then return 3 end
  end
end
if upto > 5 then in_chunks('HSET', 6, upto) end
if #ARGV > last then in_chunks('HDEL', last + 1, #ARGV) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if merged then
  -- Best effort: a server out of memory refuses the write; the next writer rebuilds.
  redis.pcall('HSET', KEYS[1], 'x', merged)
  return 2
end
return 1
"""
)
_TOUCH = (
    _VIEW
    + """
local s = redis.call('HMGET', KEYS[1], 'm', 'a')
if not s[1] or s[2] then return -1 end
if #ARGV > 2 then
  redis.call('HSET', KEYS[1], 's', ARGV[2], unpack(ARGV, 3, #ARGV))
else
  redis.call('HSET', KEYS[1], 's', ARGV[2])
  redis.call('HDEL', KEYS[1], 't', 'z')
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
view(KEYS[1])
return 1
"""
)
# Retire a rotated session's old ID. ARGV: the new session's ID, the grace in ms (0: no
# alias), the view the new session's data was built from ('' when the rotation replaced
# the data, so nothing stored since matters), and how long in ms the marker that a
# retirement without grace leaves lives. Returns 1 retired, -1 the old ID is gone, a
# grace alias or rotated by another request, or, writing nothing, the old ID's view
# when it is not the one given: a parallel save changed the session after the load,
# and the caller merges that into the new session and retires again.
_RETIRE = (
    _VIEW
    + """
local s = redis.call('HMGET', KEYS[1], 'm', 'a', 'x')
if s[2] == ARGV[1] then return 1 end  -- this very retirement, run twice (a retried command)
if not s[1] or s[2] then return -1 end
if ARGV[3] ~= '' and s[3] ~= ARGV[3] then return s[3] or view(KEYS[1]) end
if tonumber(ARGV[2]) == 0 then
  -- The record goes. A marker naming the new ID stays (no m and no view: every read
  -- finds no session) so that a retry of this command, whose first reply was lost,
  -- sees it is done instead of ending the new session.
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'a', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return 1
end
redis.call('HSET', KEYS[1], 'a', ARGV[1])
redis.call('HDEL', KEYS[1], 't', 'z')
view(KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 or ttl > tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""
)
# End a session: delete it, answering [deleted, the ID it is a grace alias of, the ID
# it was rotated from]. The alias tells the caller of a rotation that retired this ID
# after the caller looked, whose new session must end too; the ID it was rotated from
# is its own grace alias, which must end with it. With ARGV[1], the key is a grace
# alias to end only if it is still the alias of that ID (else nothing is deleted).
_END = """
local v = redis.pcall('HMGET', KEYS[1], 'a', 'p')
local a, p = false, false
if type(v) == 'table' and not v.err then a, p = v[1], v[2] end  -- else not a hash
if ARGV[1] and a ~= ARGV[1] then return {0, false, false} end
return {redis.call('DEL', KEYS[1]), a, p}
"""
_INDEX = """
if ARGV[1] ~= '' then redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
if ARGV[4] ~= '' then redis.call('ZREM', KEYS[1], ARGV[4]) end
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #top == 0 then return {} end
redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(top[2]) - tonumber(ARGV[3])) * 1000))
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


class _Watchdog:
    """The deadlines of one backend's operations on one event loop.

    One timer ticks every ``period`` seconds while operations run and cancels the
    task of any that is past its deadline. Starting and ending an operation is a
    dict insert and delete, where a timer per operation (or ``asyncio.timeout()``)
    would push and cancel a heap entry each time; the price is that an operation
    times out up to ``period`` late.
    """

    __slots__ = ("busy", "entry", "handle", "loop", "pending", "period")

    def __init__(self, loop: asyncio.AbstractEventLoop, period: float) -> None:
        self.loop = loop
        self.period = period
        self.pending: dict[int, list[Any]] = {}
        self.entry: list[Any] = [None]
        self.handle: asyncio.TimerHandle | None = None
        self.busy = False

    # An operation registers [task, deadline, task.cancelling() on entry, fired,
    # socket timeout or None] in ``pending`` (RedisBackend._run does it inline), sets
    # ``busy``, and leaves the entry in ``entry`` for its first ``_Lane`` call, which
    # moves the deadline up to its socket timeout (then the fifth item is that
    # timeout, for the error) instead of registering an entry of its own. An ended
    # operation's entry has no task.

    def tick(self) -> None:
        now = self.loop.time()
        for entry in list(self.pending.values()):
            if not entry[3] and entry[1] <= now:
                entry[3] = True
                entry[0].cancel()
        if self.pending or self.busy:
            # Keep ticking through one idle period, so a steady stream of short
            # operations does not start a timer each.
            self.busy = False
            self.handle = self.loop.call_later(self.period, self.tick)
        else:
            self.handle = None


def _fired(entry: list[Any], task: asyncio.Task[Any]) -> bool:
    """Whether the CancelledError ``task`` got came from the watchdog's ``entry``:
    only if the entry fired and nobody else cancelled the task too (then it stays
    a cancellation)."""
    return bool(entry[3]) and task.uncancel() <= entry[2]


class _PoolTimeout(Exception):
    """No connection came back to a :class:`_WaitingPool` in time."""


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(_PoolTimeout())


# redis-py 7.0 and later: a connection can be marked to reconnect when it is released
# (maintenance notifications); earlier releases have no such mark.
_MARKS_FOR_RECONNECT = hasattr(AbstractConnection, "should_reconnect")
# redis-py 8.0 and later: a check for pending data that leaves the data in place.
_PEEKS = hasattr(AbstractConnection, "can_read")
# redis-py 7.3 and later: disconnect() is told the error (for its metrics).
_DISCONNECT_TAKES_ERROR = "error" in inspect.signature(AbstractConnection.disconnect).parameters


class _WaitingPool(ConnectionPool):
    """A connection pool that, when all ``max_connections`` are in use, waits up to
    ``timeout`` seconds for one to come back, as redis-py's BlockingConnectionPool
    does, but takes a free connection the plain pool's way: BlockingConnectionPool
    enters an ``asyncio.Condition`` and an ``asyncio.timeout()`` on every command,
    which cost about 27 µs per request in the in-process benchmark. Taking and
    returning a connection skip the plain pool's lock and metrics hooks too (about
    10 µs a command)."""

    def __init__(self, *, timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timeout = timeout
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        while True:
            if self._waiters or not self.can_get_connection():
                await self._wait()
            # No lock, unlike ConnectionPool: nothing awaits between the check and
            # the take, so no other task can come between them.
            try:
                connection = self.get_available_connection()  # type: ignore[no-untyped-call]
            except RedisConnectionError:
                # Taken between the wake-up and here (MaxConnectionsError; a plain
                # ConnectionError before redis-py 7.2): wait again. Taking a connection
                # does no I/O, so nothing else raises here.
                continue
            break
        if self._waiters and self.can_get_connection():
            self._wake_one()  # more came back than this one: let the next in
        try:
            # ensure_connection() for a connection that is up and clean, without
            # the retry wrapper its connect() enters even then. Before redis-py 8.0
            # the only check for pending data reads a byte (can_read_destructive),
            # which must run once: there ensure_connection() does it, every time.
            if not _PEEKS or not connection.is_connected or await connection.can_read():
                await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def _wait(self) -> None:
        # A timer of our own, not asyncio.wait_for(): on Python 3.11 wait_for can
        # swallow a cancellation that lands as the waiter is woken (gh-86296).
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(self.timeout, _expire, waiter)
        try:
            await waiter
        except _PoolTimeout:
            raise RedisConnectionError("No connection available.") from None
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._wake_one()  # woken, then cancelled: the turn goes to the next
            raise
        finally:
            timer.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def release(self, connection: Any) -> None:
        # ConnectionPool.release, without the lock (nothing awaits until the
        # connection is back) and without its after-release event and metrics: this
        # pool is the backend's own, made from a URL, so no credential provider or
        # maintenance-notification handler listens for them.
        self._in_use_connections.remove(connection)
        if _MARKS_FOR_RECONNECT and connection.should_reconnect():
            await connection.disconnect()
        self._available_connections.append(connection)
        self._wake_one()


class _Script:
    """EVALSHA with a fallback to EVAL when the server (or a Cluster node) does not
    have the script cached yet: one round trip in the steady state."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, client: Client | _Lane, key: str, *args: Any) -> Any:
        try:
            return await client.evalsha(self.sha, 1, key, *args)
        except NoScriptError:
            return await client.eval(self.source, 1, key, *args)


# "$<length>" of the bulk strings of the usual sizes, made once.
_LENGTHS = [b"$%d" % size for size in range(4096)]


def _encoded(arg: Any) -> bytes:
    # As redis-py's encoder does.
    if type(arg) is str:
        return arg.encode()
    if type(arg) is float:
        return repr(arg).encode()
    return b"%d" % arg


def _bulk(args: Sequence[Any]) -> bytes:
    """The RESP bulk strings of ``args`` (bytes, str, int or float), without the
    closing CRLF of the last one: each is "$<length>" and the bytes, and one join with
    CRLF between all of them makes the whole."""
    parts: list[bytes] = []
    add = parts.append
    lengths = _LENGTHS
    for arg in args:
        if type(arg) is not bytes:
            arg = _encoded(arg)
        size = len(arg)
        add(lengths[size] if size < 4096 else b"$%d" % size)
        add(arg)
    return b"\r\n".join(parts)


def _pack(*args: Any) -> bytes:
    """One command in RESP, as redis-py's ``pack_command`` makes it, without its
    per-argument encoder calls."""
    return b"*%d\r\n%b\r\n" % (len(args), _bulk(args))


async def _exchange(connection: Any, packed: bytes) -> Any:
    # The per-call timeouts redis-py wraps around a write (``asyncio.wait_for``, a task
    # per command) and a read (``asyncio.timeout``) are left out: the backend's watchdog
    # bounds the whole call instead. A read cut short by it disconnects, as any
    # interrupted read does in redis-py, so no connection returns to the pool mid-reply.
    if not connection.is_connected:
        await connection.connect()
    connection._writer.write(packed)
    return await connection.read_response(timeout=math.inf)


async def _retry(connection: Any, packed: bytes, error: Exception) -> Any:
    """The attempts after a first one that failed with ``error``, made by the
    connection's ``Retry`` as if that first one had been its own: the number of
    retries, their backoff and the errors they cover stay its settings. (The first
    attempt is made without it: its coroutine and two closures cost a few µs on every
    command.)"""
    first = [error]

    async def attempt() -> Any:
        if first:
            raise first.pop()
        return await _exchange(connection, packed)

    def fail(failure: Exception) -> Awaitable[None]:
        if _DISCONNECT_TAKES_ERROR:
            return connection.disconnect(error=failure)  # type: ignore[no-any-return]
        return connection.disconnect()  # type: ignore[no-any-return]

    return await connection.retry.call_with_retry(attempt, fail)


def _takes_no_arguments(function: Callable[..., Any]) -> bool:
    """Whether ``function`` can be called without arguments."""
    return all(
        parameter.default is not inspect.Parameter.empty
        or parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        for parameter in inspect.signature(function).parameters.values()
    )


# The packed "EVALSHA <sha> 1" that starts each script's command, by SHA.
_EVALSHA_HEADS: dict[str, bytes] = {}


class _Lane:
    """The commands of the request path (the load's HGET and the scripts), sent on the
    connections of a plain or Sentinel client's pool, one packed write and one read
    each. A ``redis.asyncio.Redis`` call spends about 40 µs of its own (a task for its
    write timeout, a timer for its read timeout, metrics hooks) on a small VM, where
    a loopback round trip costs 50 to 130 µs. Retries follow the connection's own
    ``Retry`` (see _retry); the connection's ``socket_timeout`` bounds a call with its
    retries, through the backend's watchdog: the first call of an operation moves the
    operation's own deadline up for its duration, any other registers one. A Cluster
    client keeps redis-py's own path (its routing)."""

    __slots__ = ("backend", "pool", "take")

    def __init__(self, backend: RedisBackend, client: Redis) -> None:
        self.backend = backend
        self.pool = client.connection_pool
        # A pool's get_connection() takes no arguments since redis-py 5.3 (which
        # deprecates them) and requires a command name before.
        take = self.pool.get_connection
        self.take: Callable[[], Awaitable[Any]] = (
            take if _takes_no_arguments(take) else functools.partial(take, "EVALSHA")
        )

    async def call(self, packed: bytes) -> Any:
        watchdog = self.backend._watchdog
        assert watchdog is not None  # every call runs inside RedisBackend._run
        # Read before the first await: the entry of the operation this call is in,
        # unless a parallel operation has started since (a script's EVAL fallback).
        entry = watchdog.entry
        pool = self.pool
        connection = await self.take()
        deadline = None
        try:
            timeout = connection.socket_timeout
            if timeout:
                task = asyncio.current_task()
                if entry[0] is not task:
                    return await self._own_deadline(connection, packed, watchdog, task, timeout)
                end = watchdog.loop.time() + timeout
                if end < entry[1]:
                    deadline = entry[1]
                    entry[1], entry[4] = end, timeout
            try:
                return await _exchange(connection, packed)
            except Exception as error:
                return await _retry(connection, packed, error)
        finally:
            if deadline is not None and not entry[3]:  # once fired, _run reads it
                entry[1], entry[4] = deadline, None
            await pool.release(connection)

    @staticmethod
    async def _own_deadline(
        connection: Any,
        packed: bytes,
        watchdog: _Watchdog,
        task: asyncio.Task[Any] | None,
        seconds: float,
    ) -> Any:
        assert task is not None
        entry: list[Any] = [task, watchdog.loop.time() + seconds, task.cancelling(), False, seconds]
        watchdog.pending[id(entry)] = entry
        try:
            try:
                return await _exchange(connection, packed)
            except Exception as error:
                return await _retry(connection, packed, error)
        except asyncio.CancelledError:
            if _fired(entry, task):
                raise RedisTimeoutError(f"Timeout reading from Redis after {seconds}s") from None
            raise
        finally:
            del watchdog.pending[id(entry)]

    def hget(self, key: str, field: str) -> Awaitable[Any]:
        return self.call(_pack(b"HGET", key, field))

    def delete(self, key: str) -> Awaitable[Any]:
        return self.call(_pack(b"DEL", key))

    def evalsha(self, sha: str, numkeys: int, key: str, *args: Any) -> Awaitable[Any]:
        head = _EVALSHA_HEADS.get(sha)
        if head is None:
            head = _EVALSHA_HEADS[sha] = _bulk((b"EVALSHA", sha, numkeys))
        body = _bulk((key, *args))
        return self.call(b"*%d\r\n%b\r\n%b\r\n" % (len(args) + 4, head, body))

    def eval(self, source: str, numkeys: int, key: str, *args: Any) -> Awaitable[Any]:
        return self.call(_pack(b"EVAL", source, numkeys, key, *args))


_load, _save, _touch, _retire, _end, _index = map(
    _Script, (_LOAD, _SAVE, _TOUCH, _RETIRE, _END, _INDEX)
)
# How many rotations in a row _end follows from an ID that was retired meanwhile.
_MAX_HOPS = 8
# How many times a rotation merges what parallel saves stored before it gives up (a 503).
_MAX_MERGES = 8


def _raised_in_redis_py(exc: BaseException) -> bool:
    """Whether a frame of redis-py's is on the way from where ``exc`` was caught to
    where it was raised."""
    frame = exc.__traceback__
    while frame is not None:
        if frame.tb_frame.f_globals.get("__name__", "").partition(".")[0] == "redis":
            return True
        frame = frame.tb_next
    return False


def _number(raw: Any) -> float | None:
    if raw is None:
        return None
    if type(raw) is not float and type(raw) is not int:
        raise ValueError(f"expected a number, got {type(raw).__name__}")
    return float(raw)


# Stored times are epoch seconds that this library wrote. One outside [0, 10**12] (the
# year 33658), or NaN, is not ours, and a TTL derived from it would be outside what
# Redis's PEXPIRE and SET PX accept: the record is corrupt.
_MAX_STORED_TIME = 10**12


def _time(raw: Any) -> float:
    value = _number(raw)
    if value is None:
        raise ValueError("a required time is missing")
    if not 0 <= value <= _MAX_STORED_TIME:
        raise ValueError("a stored time is out of range")
    return value


def _optional_time(raw: Any) -> float | None:
    return None if raw is None else _time(raw)


def _str(raw: Any) -> str:
    if type(raw) is not str:
        raise ValueError(f"expected a str, got {type(raw).__name__}")
    return raw


def _alias(raw: Any) -> str:
    """The session a grace alias points to, from a stored view."""
    alias = _id(_str(raw))
    if alias is None:
        raise ValueError("alias target is not a session ID")
    return alias


def _optional_str(raw: Any) -> str | None:
    return None if raw is None else _str(raw)


def _meta(meta: Any) -> tuple[float, float, int | None, float | None, bool, str | None]:
    """created, rotated, idle override, fixed expiry, browser session, user ID from a
    stored ``m`` map; ValueError/TypeError/KeyError when it is not one of ours."""
    if type(meta) is not dict:
        raise ValueError("session metadata is not a map")
    idle = meta.get("i")
    if idle is not None and (type(idle) is not int or not 0 < idle <= _MAX_STORED_TIME):
        raise ValueError("idle timeout is not a positive int in range")
    return (
        _time(meta["c"]),
        _time(meta["r"]),
        idle,
        _optional_time(meta.get("f")),
        meta.get("b") is True,
        _optional_str(meta.get("u")),
    )


def _seen(seen: Any) -> tuple[float, str | None, str | None]:
    """last seen, client address, user agent from a stored ``s`` array."""
    if type(seen) is not list or len(seen) != 3:
        raise ValueError("last-seen entry is not a 3-item array")
    return _time(seen[0]), _optional_str(seen[1]), _optional_str(seen[2])


# The longest client address and user agent kept in a session's ``s`` field (the
# middleware already cuts the user agent to 256 bytes).
_MAX_SEEN_TEXT = 256


def _seen_list(last_seen: float, ip: str | None, user_agent: str | None) -> list[Any]:
    """The ``s`` field before packing: [last seen, client address, user agent]."""
    if ip is not None and len(ip) > _MAX_SEEN_TEXT:
        ip = ip[:_MAX_SEEN_TEXT]
    if user_agent is not None and len(user_agent) > _MAX_SEEN_TEXT:
        user_agent = user_agent[:_MAX_SEEN_TEXT]
    return [last_seen, ip, user_agent]


def _seen_field(record: SessionRecord) -> bytes:
    """The ``s`` field, packed."""
    return _packed_seen(_seen_list(record.last_seen, record.ip, record.user_agent))


# A save refuses a view over the serializer's max_size, not counting its ``s`` entry
# (when and where the session was last seen); the scripts that refresh the view later
# (a load's sliding refresh, a touch, a rotation's retirement) rewrite ``s`` (at most
# 1 + 9 + 2 * (3 + 4 * 256) bytes), ``t`` (9) and the alias (66), not the data. A load
# accepts a view this much over max_size, so no refresh turns a record that was saved
# into one the load refuses.
_VIEW_ROOM = 4096


def _too_large(size: int | None, limit: int) -> str:
    what = "packs" if size is None else f"packs to {size} bytes,"
    return (
        f"{what} over the limit of {limit} bytes for a stored session (the "
        "serializer's max_size); store less in it, or raise "
        "MsgpackSerializer(max_size=...)"
    )


def _loads_back_same(value: Any) -> bool:
    """Whether ``value`` loads back equal and of the same type: one of _ROUND_TRIP, or
    an aware datetime already in UTC (a datetime loads back in UTC)."""
    kind = type(value)
    return kind in _ROUND_TRIP or (kind is datetime and value.tzinfo is UTC)


def _meta_map(record: SessionRecord) -> dict[str, Any]:
    meta: dict[str, Any] = {"c": record.created_at, "r": record.rotated_at}
    if record.idle_timeout is not None:
        meta["i"] = record.idle_timeout
    if record.fixed_expiry is not None:
        meta["f"] = record.fixed_expiry
    if record.browser_session:
        meta["b"] = True
    if record.user_id is not None:
        meta["u"] = record.user_id
    return meta


def _index_score(record: SessionRecord, now: float) -> float:
    """The score of a bound session in its user's index: the latest moment it can
    live (activity never moves the absolute deadline)."""
    return record.absolute_expiry or now + 366 * 86400


def _index_stale(record: SessionRecord, now: float, ttl: int) -> bool:
    """Whether a write of ``record`` with ``ttl`` lets a bound session live past the
    score its user's index holds for it (``d`` in the loaded ``m``): a fixed expiry
    lifted, or a deploy that raised absolute_timeout. The index must then follow, or
    it drops (and its key expires before) a session still alive. So must it when the
    write binds the session to another user without a rotation (a bind_user() during
    a WebSocket), which leaves it out of that user's index.

    A record that carries no loaded ``m`` (the hybrid backend's, built from its access
    token) cannot be judged and is left alone, so a plain write keeps its one command:
    the hybrid's refresh rotates the session, which re-scores it. Until then, a hybrid
    session whose deadline moved later can drop out of its user's index."""
    if record.user_id is None or "meta" not in record.extra:
        return False
    loaded = record.extra["meta"]
    if type(loaded) is not dict or loaded.get("u") != record.user_id:
        return True
    scored = loaded.get("d")
    if (type(scored) is not float and type(scored) is not int) or not math.isfinite(scored):
        return True  # unknown: stored before the index score was kept here
    return (record.absolute_expiry or now + ttl) > scored


def _score_meta(
    meta: dict[str, Any], record: SessionRecord, now: float, ttl: int, *, new: bool
) -> bool:
    """Enter in ``meta`` (as ``d``) the score the user's index holds for the bound
    session after this save; True when the save must re-score it (_index_stale)."""
    if record.user_id is None:
        return False
    if new:
        meta["d"] = _index_score(record, now)  # the save enters it in the index
        return False
    if _index_stale(record, now, ttl):
        meta["d"] = _index_score(record, now)
        return True
    loaded = record.extra.get("meta")
    if type(loaded) is dict and "d" in loaded:
        meta["d"] = loaded["d"]  # unknown stays unknown: see _index_stale
    return False


def _next_due(record: SessionRecord) -> float | None:
    """When the saved session's next sliding refresh is due; None: it never slides."""
    if record.sliding is None or record.absolute_expiry is None:
        return None
    return record.last_seen + record.sliding[0]


def _schedule(record: SessionRecord, due: float | None) -> list[bytes]:
    """The fields the load script refreshes by: ``t``, when the next refresh is due
    (``due``, from :func:`_next_due`; read on every load, so a bare number), and
    ``z``, "period idle cap" (read only when one is due); none when the session
    never slides."""
    if due is None:
        return []
    assert record.sliding is not None
    period, idle = record.sliding
    return [
        b"t",
        repr(due).encode(),
        b"z",
        b"%d %d %r" % (period, idle, record.absolute_expiry),
    ]


_FIXMAPS = [bytes((0x80 | size,)) for size in range(16)]


def _map_header(size: int) -> bytes:
    if size < 16:
        return _FIXMAPS[size]
    if size < 65536:
        return b"\xde" + size.to_bytes(2, "big")
    return b"\xdf" + size.to_bytes(4, "big")


def _field(name: str) -> bytes:
    """The hash field of a session key: the key's msgpack encoding (it starts with a
    byte >= 0xa0, which no metadata field name does)."""
    try:
        return _packb(name)  # type: ignore[no-any-return]
    except UnicodeEncodeError:
        return b""  # never stored, so nothing to delete


# A view no record has (msgpack never uses the byte 0xc1): a rotation whose loaded view
# is unknown gets the stored one from the retirement, and merges.
_NO_VIEW = b"\xc1"


def _view(
    meta: bytes, seen: bytes, due: float | None, parts: Collection[bytes], limit: int
) -> bytes:
    """A record's view from its packed ``m`` and ``s``, its next refresh and its keys'
    packed pairs, as the scripts build it. :class:`SessionTooLarge` when it is over
    ``limit`` not counting the ``s`` entry (when and where the session was last seen),
    which a later refresh rewrites within the load's _VIEW_ROOM."""
    view = b"".join(
        (b"\x95", meta, seen, _packed_due(due), b"\xc0", _map_header(len(parts)), *parts)
    )
    if len(view) - len(seen) > limit:
        raise SessionTooLarge("the session " + _too_large(len(view) - len(seen), limit))
    return view


class _State(NamedTuple):
    created_at: float
    last_seen: float
    ip: str | None
    user_agent: str | None
    user_id: str | None
    alias_of: str | None
    rotated_at: float  # the last ID rotation: a login (bind_user rotates) or later


def _state(meta: bytes | None, seen: bytes | None, alias: bytes | None) -> _State | None:
    """A session's state from its ``m``, ``s`` and ``a`` fields; None when the
    session is gone or its fields are not ours (it is then treated as gone)."""
    if meta is None or seen is None:
        return None
    try:
        created, rotated, _, _, _, user_id = _meta(_unpackb(meta))
        last_seen, ip, user_agent = _seen(_unpackb(seen))
    except Exception:  # any decode failure: msgpack raises several types
        return None
    return _State(
        created,
        last_seen,
        ip,
        user_agent,
        user_id,
        None if alias is None else _id(alias),
        rotated,
    )


def _aliases_into(ids: set[str], states: dict[str, _State | None]) -> list[str]:
    """The members of ``states`` that are grace aliases of one of ``ids``, or of one
    of those, and so on (up to _MAX_HOPS rotations back)."""
    found: list[str] = []
    targets = set(ids)
    for _ in range(_MAX_HOPS):
        more = [
            session_id
            for session_id, state in states.items()
            if state is not None and state.alias_of in targets and session_id not in targets
        ]
        if not more:
            break
        found += more
        targets.update(more)
    return found


# Strings packed on every save: session key names, client addresses and user agents
# (a site sees few of each). Bounded; dict operations are atomic, so the event loops
# of several threads may share it.
_PACKED: dict[str, bytes] = {}


def _packed_str(text: str) -> bytes:
    """``text`` in msgpack, from a small cache."""
    packed = _PACKED.get(text)
    if packed is None:
        packed = _packb(text)
        if len(_PACKED) >= 8192:
            _PACKED.clear()
        _PACKED[text] = packed
    return packed


# A msgpack float64: its type byte (0xcb), then the double.
_DOUBLE = struct.Struct(">Bd").pack


def _packed_seen(seen: list[Any]) -> bytes:
    """The ``s`` field from :func:`_seen_list`: a msgpack array of the last-seen time
    (a float64, which loads back as the float the load reads it as), address and agent."""
    ip, agent = seen[1], seen[2]
    return (
        b"\x93"
        + _DOUBLE(0xCB, seen[0])
        + (b"\xc0" if ip is None else _packed_str(ip))
        + (b"\xc0" if agent is None else _packed_str(agent))
    )


def _packed_due(due: float | None) -> bytes:
    """``due`` as the view holds it: a msgpack float64, or nil."""
    return b"\xc0" if due is None else _DOUBLE(0xCB, due)


_SESSION_ID = re.compile(r"[0-9a-f]{64}")
# What follows ``{prefix}u:`` in a user's index key (see RedisBackend._user_key).
_INDEX_TAG = re.compile(r"\{[0-9a-f]{32}\}")
# The characters a SCAN MATCH pattern gives a meaning to.
_GLOB = re.compile(r"[*?\[\]\\]")


def _id(raw: Any) -> str | None:
    """A session ID (SHA-256 hex) read from a stored alias or index member; None for
    anything else, which no code of ours wrote and which must not reach a key name."""
    if type(raw) is bytes:
        raw = raw.decode("latin-1")  # never fails; a non-ASCII byte then fails the match
    if type(raw) is not str or not _SESSION_ID.fullmatch(raw):
        return None
    return raw


def _ids(raws: Sequence[Any]) -> list[str]:
    return [i for i in map(_id, raws) if i is not None]


class RedisBackend:
    """Sessions in Redis, Redis Cluster or a Sentinel-managed Redis.

    ``client`` is a ``redis.asyncio.Redis``, a ``RedisCluster``, a Sentinel
    ``master_for()`` client, or a URL (the backend then creates the client with the
    timeouts below and closes it in :meth:`aclose`). A client with
    ``decode_responses=True`` is refused: session data is binary.

    Every operation is bounded by ``operation_timeout`` seconds in total, whatever the
    client's own settings, and any Redis failure becomes :class:`BackendUnavailable`
    or :class:`BackendError` (the middleware answers 503, or runs fail-open).
    ``socket_timeout``, ``connect_timeout``, ``retries`` and ``max_connections``
    configure a client made from a URL: redis-py's defaults (no socket timeout, several retries with backoff)
    would turn a stalled server into a stalled request.

    ``rotation_grace`` seconds (0 disables it): how long a rotated-away token keeps
    reading the pre-rotation data, read-only, so parallel requests of the same
    browser are not logged out. ``max_sessions_per_user`` ends a user's sessions
    beyond that number, the least recently logged in (or rotated) first, never the
    one being bound. Values are stored with ``serializer`` (msgpack by
    default), which refuses unstorable values when they are set.
    """

    def __init__(
        self,
        client: Client | str,
        *,
        prefix: str = "asgi_sessions:",
        rotation_grace: int = 5,
        max_sessions_per_user: int | None = None,
        operation_timeout: float = 2.0,
        socket_timeout: float = 0.5,
        connect_timeout: float = 0.5,
        retries: int = 1,
        max_connections: int = 50,
        serializer: MsgpackSerializer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if rotation_grace < 0:
            raise ConfigurationError("rotation_grace must not be negative (0 disables it)")
        if max_sessions_per_user is not None and max_sessions_per_user < 1:
            raise ConfigurationError("max_sessions_per_user must be at least 1, or None")
        if not operation_timeout > 0 or not socket_timeout > 0 or not connect_timeout > 0:
            raise ConfigurationError(
                "operation_timeout, socket_timeout and connect_timeout must be positive"
            )
        if retries < 0:
            raise ConfigurationError("retries must not be negative")
        self._owns_client = isinstance(client, str)
        if isinstance(client, str):
            try:
                # A burst beyond max_connections waits for a free connection (within
                # operation_timeout) instead of failing at once.
                pool = _WaitingPool.from_url(
                    client,
                    max_connections=max_connections,
                    timeout=operation_timeout,
                    socket_timeout=socket_timeout,
                    socket_connect_timeout=connect_timeout,
                    retry=Retry(
                        ExponentialBackoff(cap=0.1, base=0.01),
                        retries,
                        supported_errors=(RedisConnectionError,),
                    ),
                    health_check_interval=30,
                )
                client = Redis.from_pool(pool)  # the client owns (and closes) the pool
            except ValueError as exc:
                raise ConfigurationError(f"invalid Redis URL: {exc}") from None
        elif not isinstance(client, Redis | RedisCluster):
            raise ConfigurationError(
                "client must be a redis.asyncio.Redis or RedisCluster (or a URL), got "
                f"{type(client).__name__}"
            )
        if client.get_encoder().decode_responses:
            raise ConfigurationError(
                "the Redis client has decode_responses=True; session data is binary: "
                "pass a client created with decode_responses=False (the default)"
            )
        self.client: Client = client
        # The request path's commands: lean on a plain or Sentinel client.
        self._fast: Client | _Lane = _Lane(self, client) if isinstance(client, Redis) else client
        self.prefix = prefix
        self.rotation_grace = rotation_grace
        self.max_sessions_per_user = max_sessions_per_user
        self.operation_timeout = operation_timeout
        self.serializer = serializer or MsgpackSerializer()
        self._view_limit = self.serializer.max_size + _VIEW_ROOM
        self.clock = clock
        # session ID -> when its next refresh is due, as last seen by this process.
        # A stale entry is harmless: the schedule only moves later, except when a
        # save shortens it, and then the middleware touches on the refresh it sees due.
        self._due: dict[str, float] = {}
        self._due_size = 10_000
        # Bounded caches of the read path (each up to _cache_size entries): token ->
        # session ID (a SHA-256 and a format check saved), and view bytes -> the
        # decoded record fields.
        self._cache_size = 10_000
        # The deadlines of this backend's operations on the running loop.
        self._watchdog: _Watchdog | None = None
        self._ids: dict[str, str] = {}
        self._views: dict[bytes, tuple[Any, ...]] = {}
        # Called with the ID of each session this store ends that its caller did not
        # name: evicted by max_sessions_per_user, or reached through grace aliases
        # (the hybrid backend stops their access tokens with it).
        self.on_end: Callable[[str], None] | None = None
        # Hooks for the events only the store sees (revoked); the middleware installs
        # its own here when this has none.
        self.events = Emitter(None)

    # -- keys ----------------------------------------------------------------------

    def _key(self, session_id: str) -> str:
        return f"{self.prefix}s:{session_id}"

    def _user_key(self, user_id: str) -> str:
        # The braces are a Cluster hash tag: a user's keys share one slot.
        digest = hashlib.sha256(user_id.encode()).hexdigest()[:32]
        return f"{self.prefix}u:{{{digest}}}"

    async def _run(self, operation: Awaitable[T]) -> T:
        """Await ``operation`` within ``operation_timeout`` (up to a twentieth of it
        late), turning every Redis failure into :class:`BackendUnavailable`."""
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        watchdog = self._watchdog
        if watchdog is None or watchdog.loop is not loop:
            # A new loop (or the first): a backend used from several threads' loops
            # switches watchdogs; each call keeps the one it registered with.
            watchdog = self._watchdog = _Watchdog(loop, self.operation_timeout / 20)
        # watchdog.start(), inlined: this runs on every Redis call.
        entry: list[Any] = [
            task,
            loop.time() + self.operation_timeout,
            task.cancelling(),
            False,
            None,
        ]
        watchdog.pending[id(entry)] = entry
        watchdog.entry = entry
        watchdog.busy = True
        if watchdog.handle is None:
            watchdog.handle = loop.call_later(watchdog.period, watchdog.tick)
        try:
            return await operation
        except asyncio.CancelledError:
            if _fired(entry, task):
                if entry[4] is not None:
                    # A _Lane call's socket timeout, which moved the deadline up.
                    raise BackendUnavailable(
                        f"Redis timed out: Timeout reading from Redis after {entry[4]}s"
                    ) from None
                raise BackendUnavailable(
                    f"Redis did not answer within {self.operation_timeout}s"
                ) from None
            raise
        except RedisTimeoutError as exc:
            raise BackendUnavailable(f"Redis timed out: {exc}") from exc
        except RedisError as exc:
            raise BackendUnavailable(f"Redis failed: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            # Raised inside redis-py but not a RedisError (a Cluster client that
            # re-discovers its nodes while a command uses a connection it closed, a
            # client misconfigured so that connecting fails with a TypeError): the
            # store failed, which is a 503, never a 500. Ours stay ours.
            if not _raised_in_redis_py(exc):
                raise
            raise BackendUnavailable(
                f"the Redis client failed: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            del watchdog.pending[id(entry)]
            entry[0] = None  # ended: a later _Lane call must not move its deadline

    # -- the backend protocol ----------------------------------------------------------

    async def load(
        self,
        token: str,
        *,
        now: float,
        policy: ExpiryPolicy | None = None,
        ip: str | None = None,
        user_agent: str | None = None,
    ) -> SessionRecord | None:
        ids = self._ids
        session_id = ids.get(token)
        if session_id is None:
            session_id = checked_id(token)  # a malformed token never reaches Redis
            if len(ids) >= self._cache_size:
                ids.clear()  # a bound; refilled by the next requests
            ids[token] = session_id
        key = f"{self.prefix}s:{session_id}"
        due = self._due.get(session_id)
        raw: Any
        refreshed = False
        try:
            if policy is None or (due is not None and now < due):
                # No refresh can be due (this process saw the schedule): one plain
                # HGET of the view, several times cheaper on the server than a script.
                raw = await self._run(self._fast.hget(key, "x"))
            else:
                seen = _packed_seen(_seen_list(now, ip, user_agent))
                raw = await self._run(
                    _load(
                        self._fast,
                        key,
                        repr(now).encode(),
                        seen,
                        policy.idle_timeout,
                        policy.absolute_timeout,
                    )
                )
                if raw:
                    refreshed, raw = raw[1] == 0xC3, raw[2:]
        except BackendUnavailable as exc:
            cause = exc.__cause__
            if not (isinstance(cause, ResponseError) and "WRONGTYPE" in str(cause)):
                raise
            raw = b"\xc1"  # not a hash: a corrupt record, handled below
        if raw is None:
            self._due.pop(session_id, None)
            return None
        try:
            record = self._parse(session_id, raw, refreshed)
        except (SerializationError, ValueError, TypeError, KeyError) as exc:
            self._due.pop(session_id, None)
            logger.warning(
                "session %s: stored record is corrupt (%s); removed", session_id[:12], exc
            )
            await self._run(self._fast.delete(key))
            return None
        return record

    def _parse(self, session_id: str, view: bytes, refreshed: bool) -> SessionRecord:
        # A session's view is the same bytes from one request to the next until it is
        # written: decode and check it once, then build each request's record from
        # the result (with its own copy of the data).
        views = self._views
        parsed = views.get(view)
        if parsed is None:
            parsed = self._decode(view)
            make_room(views, self._cache_size)
            views[view] = parsed
        meta, created, rotated, idle, fixed, browser, user, seen, ip, agent, due, alias, flat, _ = (
            parsed
        )
        # Flat data (no list or dict inside) is copied; nested data is decoded again,
        # so a request never shares a mutable value with the cache or another request.
        data = (
            flat.copy()
            if flat is not None
            else self.serializer.unpack(view, limit=self._view_limit)[4]
        )
        extra: dict[str, Any] = {"meta": meta, "view": view}
        if alias is not None:
            extra["alias_of"] = alias
        self._remember(session_id, due)
        return SessionRecord(
            session_id,
            data,
            created,
            seen,
            rotated,
            idle,
            fixed,
            browser,
            user,
            None,
            None,
            ip,
            agent,
            alias is not None,
            False,
            refreshed,
            extra,
        )

    def _decode(self, view: bytes) -> tuple[Any, ...]:
        """The view as the fields of a record; SerializationError, ValueError,
        TypeError or KeyError when it is not one of ours. The view is one msgpack
        array, [meta, seen, due, alias, data], which one C call unpacks (redis-py
        would parse a nested reply in Python, element by element)."""
        meta, seen, due, alias, data = self.serializer.unpack(view, limit=self._view_limit)
        self.serializer.check_loaded(data)
        created, rotated, idle, fixed, browser, user = _meta(meta)
        last_seen, ip, user_agent = _seen(seen)
        flat = None if any(type(v) in _CONTAINERS for v in data.values()) else data
        return (
            meta,
            created,
            rotated,
            idle,
            fixed,
            browser,
            user,
            last_seen,
            ip,
            user_agent,
            _number(due),
            None if alias is None else _alias(alias),
            flat,
            None,  # the keys' packed pairs: known only for a view this process stored
        )

    def _cache_view(
        self,
        view: bytes,
        record: SessionRecord,
        seen: list[Any],
        due: float | None,
        parts: dict[str, bytes],
        previous: tuple[Any, ...],
    ) -> None:
        """Enter the view a delta save just stored in the views cache, so the session's
        next load (a plain HGET that returns these very bytes, unless another request
        wrote since) decodes nothing and its save packs only the keys it changes.
        ``previous`` is the entry of the view the save changed; the caller saw that the
        save left ``m`` as it was, so its metadata fields still hold, and that every
        data value loads back equal and of the same type: the entry is what decoding
        the view would give."""
        views = self._views
        make_room(views, self._cache_size)
        views[view] = (
            *previous[:7],
            float(seen[0]),
            seen[1],
            seen[2],
            None if due is None else float(due),
            None,
            dict(record.data),
            parts,
        )

    def _remember(self, session_id: str, due: float | None) -> None:
        """Note when the session's next sliding refresh is due (None: never), so
        loads before then skip the script."""
        cache = self._due
        if session_id not in cache:
            make_room(cache, self._due_size)
        cache[session_id] = math.inf if due is None else due

    async def save(
        self,
        token: str | None,
        record: SessionRecord,
        delta: Delta,
        *,
        now: float,
        ttl: int,
        rotate: bool,
    ) -> str:
        dumps = self.serializer.dumps_value
        full = token is None or rotate or delta.replace
        loaded = b"" if full else record.extra.get("view", b"")
        # The views-cache entry of the loaded view, and its keys' stored pairs when this
        # process stored that view itself.
        entry = self._views.get(loaded) if loaded else None
        known: dict[str, bytes] | None = entry[13] if entry is not None else None
        meta = _meta_map(record)
        reindex = _score_meta(meta, record, now, ttl, new=token is None or rotate)
        seen_list = _seen_list(record.last_seen, record.ip, record.user_agent)
        seen = _packed_seen(seen_list)
        fields: list[bytes] = [b"s", seen]
        if rotate and token is not None and self.rotation_grace:
            # The new session names the ID it is rotated from, the grace alias the
            # retirement below makes of it, so that ending it ends that alias too. (Not
            # first: ``_retire`` finds ``s`` and ``m`` at the ends of the head.)
            fields += (b"p", record.session_id.encode())
        removed: list[bytes] = []
        due = _next_due(record)
        schedule = _schedule(record, due)
        if schedule:
            fields += schedule
        else:
            removed += (b"t", b"z")
        meta_changed = full or meta != record.extra.get("meta")
        # Written by every save, changed or not: the TTL and the refresh schedule above
        # come from this metadata, and a parallel request may have stored other
        # metadata since the load (a set_expiry()). Keeping that one would leave a
        # record that outlives what its own metadata states; so the last save's
        # metadata wins, as the protocol says.
        packed_meta = _packb(meta)
        fields += (b"m", packed_meta)
        # Where the data pairs start: a rotation that merges keeps what comes before.
        head = len(fields)
        # Each changed key's msgpack name and value, concatenated as in the view.
        changed: dict[str, bytes] = {}
        # Whether every data value loads back equal and of the same type: the view
        # can then go into the views cache as it is (see _cache_view).
        exact = True
        for name, value in (record.data if full else delta.updates).items():
            blob = dumps(name, value)  # first: it names a key that cannot be stored
            packed_name = _packed_str(name)
            fields += (packed_name, blob)
            changed[name] = packed_name + blob
            if exact and not _loads_back_same(value):
                exact = False
        # The view to store with the record: known here for a whole record, and for
        # a delta when this request loaded the view it changes (record.data is then
        # the loaded data with this request's changes). The script keeps a delta's
        # only if nobody wrote since the load, and otherwise rebuilds it.
        parts = changed
        if known is not None:
            # A key this request left alone still holds the very value that was
            # loaded (of a type that cannot change in place): its stored pair is
            # reused, not packed again.
            parts = known.copy()
            parts.update(changed)
            for name in delta.removed:
                parts.pop(name, None)
        elif loaded:
            parts = {}
            for name, value in record.data.items():
                pair = changed.get(name)
                if pair is None:
                    if type(value) not in _UNCHANGEABLE:
                        # A list or dict this request did not set may have been
                        # changed in place, which is not saved: the view must show
                        # the stored value, so the script rebuilds it.
                        loaded = b""
                        break
                    pair = _packed_str(name) + dumps(name, value)
                    if exact and not _loads_back_same(value):
                        exact = False
                parts[name] = pair
        limit = self.serializer.max_size
        if full or loaded:
            view = _view(packed_meta, seen, due, parts.values(), limit)
            fields += (b"x", view)
        else:
            view = b""
        if not full and delta.removed:
            removed += [_field(name) for name in delta.removed]
        count = len(fields) // 2
        ttl_ms = ttl * 1000
        if token is not None and not rotate:
            indexed: list[Any] | None = None
            rebound = False
            if reindex:
                before = record.extra.get("meta")
                rebound = type(before) is not dict or before.get("u") != record.user_id
                indexed = await self._reindex(record, now)
            mode = b"r" if delta.replace else b"u"
            result = await self._run(
                _save(
                    self._fast,
                    self._key(record.session_id),
                    mode,
                    ttl_ms,
                    count,
                    loaded,
                    limit,
                    *fields,
                    *removed,
                )
            )
            if result == 3:
                raise SessionTooLarge(
                    "the session, with the changes other requests stored meanwhile, "
                    + _too_large(None, limit)
                )
            if result != 1 and result != 2:
                self._due.pop(record.session_id, None)
                raise SessionGone("session no longer exists")
            record.extra["meta"] = meta
            if entry is not None:
                # The loaded view is superseded: no load returns it again.
                self._views.pop(record.extra["view"], None)
                if result == 1 and loaded and exact and not meta_changed:
                    self._cache_view(view, record, seen_list, due, parts, entry)
            # The stored view, for a later commit of this record (a WebSocket's).
            record.extra["view"] = view if result == 1 else b""
            self._remember(record.session_id, due)
            cap = self.max_sessions_per_user
            if rebound and cap is not None:
                # Bound to a user without a rotation (during a WebSocket): the
                # per-user cap holds as it does for a login.
                assert record.user_id is not None
                await self._prune(
                    record.user_id,
                    _ids(indexed or ()),
                    now,
                    keep_newest=cap,
                    current=record.session_id,
                )
            return token
        # A new session, or a rotation. One step after the other, never overlapping:
        # the new key is created (never overwriting one), then entered in its user's
        # index, and only then is the old ID retired. So whenever the old ID is a
        # grace alias (or gone), the new session exists and its user's index names
        # it: a logout or revoke that ends the old ID after that ends the new one
        # too (see _end), and a revoke_user() that reads the index after that finds
        # the new one there.
        old_id = record.session_id
        user = record.user_id
        # The view the new session's data comes from, which the retirement checks the
        # old ID still has; none for a replacement, which depends on nothing stored.
        based_on = b""
        if token is not None and not delta.replace:
            based_on = record.extra.get("view") or _NO_VIEW
        while True:
            new = new_token()
            new_id = token_id(new)
            created = await self._run(
                _save(self._fast, self._key(new_id), b"n", ttl_ms, count, b"", limit, *fields)
            )
            if created == 1:
                break
            logger.error("session ID collision on create; retrying")  # 2**-256: a broken RNG
        members: list[Any] = []
        try:
            if user is not None:
                members = await self._run(self._index_add(user, new_id, record, now))
            retired = 1
            if token is not None:
                retired = await self._retire(
                    old_id, new_id, based_on, record, delta, fields[:head], due, ttl_ms
                )
        except Exception:
            # The store failed half-way, or the merged session is too large: no cookie
            # will ever lead to the new session, so it goes (best effort when the
            # store is failing) before the error.
            with contextlib.suppress(BackendError):
                await self._forget(new_id, user)
            raise
        if retired < 0:
            # Logged out, revoked, or rotated by a parallel request meanwhile: the
            # new session must not outlive the old one.
            await self._forget(new_id, user)
            raise SessionGone("session no longer exists")
        self._due.pop(old_id, None)
        self._views.pop(record.extra.get("view", b""), None)  # the old ID's: superseded
        record.session_id = new_id
        # After a merge the new session holds more than this request's data, which a
        # later commit of the record (a WebSocket's) builds its view from: the stored
        # view is then unknown here, and that commit merges in the script.
        record.extra = {"meta": meta, "view": view if retired == 1 else b""}
        self._remember(new_id, due)
        if user is not None:
            await self._prune(
                user, _ids(members), now, keep_newest=self.max_sessions_per_user, current=new_id
            )
        return new

    async def _retire(
        self,
        old_id: str,
        new_id: str,
        based_on: bytes,
        record: SessionRecord,
        delta: Delta,
        head: list[bytes],
        due: float | None,
        ttl_ms: int,
    ) -> int:
        """Retire a rotated session's old ID into a grace alias of ``new_id`` (or end
        it, without grace). When a parallel save changed the old session after
        ``based_on`` was loaded, the new session is rewritten with the stored data and
        this request's ``delta`` over it, as a delta save merges, and the retirement
        is tried again: the old ID goes only once the new session holds everything,
        so a logout or revoke meanwhile ends both. ``head`` is the new session's
        fields before its data (``s``, the schedule, ``m``). 1 retired, 2 retired
        after a merge (``record.data`` is then the merged data), -1 the old session
        is gone, or was rotated or the new one ended by someone else."""
        key = self._key(old_id)
        grace = self.rotation_grace * 1000
        marker = math.ceil(self.operation_timeout * 1000)
        for merges in range(_MAX_MERGES + 1):
            reply = await self._run(_retire(self._fast, key, new_id, grace, based_on, marker))
            if type(reply) is not bytes:
                if reply != 1:
                    return -1
                return 2 if merges else 1
            if merges == _MAX_MERGES:
                break
            based_on = reply
            try:
                parsed = self._decode(reply)
            except (SerializationError, ValueError, TypeError, KeyError) as exc:
                # Nothing to merge from: the rotation keeps this request's data.
                logger.warning(
                    "session %s: stored record is corrupt (%s); rotated without it",
                    old_id[:12],
                    exc,
                )
                continue
            data = parsed[12]
            if data is None:  # _decode gives the data only when no value is a list or dict
                data = self.serializer.unpack(reply, limit=self._view_limit)[4]
            data.update(delta.updates)
            for name in delta.removed:
                data.pop(name, None)
            dumps = self.serializer.dumps_value
            fields = list(head)
            parts = []
            for name, value in data.items():
                packed_name, blob = _packed_str(name), dumps(name, value)
                fields += (packed_name, blob)
                parts.append(packed_name + blob)
            limit = self.serializer.max_size
            fields += (b"x", _view(head[-1], head[1], due, parts, limit))
            written = await self._run(
                _save(
                    self._fast,
                    self._key(new_id),
                    b"r",
                    ttl_ms,
                    len(fields) // 2,
                    b"",
                    limit,
                    *fields,
                )
            )
            if written != 1:
                return -1
            record.data = data
        raise BackendError(
            f"the session changed again after each of {_MAX_MERGES} merges of its rotation"
        )

    async def _forget(self, session_id: str, user_id: str | None) -> None:
        """Delete a session this request created and never handed out, with its
        entry in its user's index."""
        cleanup: list[Awaitable[Any]] = [self.client.delete(self._key(session_id))]
        if user_id is not None:
            cleanup.append(self.client.zrem(self._user_key(user_id), session_id))
        await self._run(asyncio.gather(*cleanup))

    async def touch(self, token: str, record: SessionRecord, *, now: float, ttl: int) -> str | None:
        if _index_stale(record, now, ttl):
            # A touch leaves ``m`` alone (a metadata write here could undo a parallel
            # request's), so until a save stores the new score each such touch pays
            # this command.
            await self._reindex(record, now)
        due = _next_due(record)
        result = await self._run(
            _touch(
                self._fast,
                self._key(record.session_id),
                ttl * 1000,
                _seen_field(record),
                *_schedule(record, due),
            )
        )
        if result != 1:
            self._due.pop(record.session_id, None)
            raise SessionGone("session no longer exists")
        self._views.pop(record.extra.get("view", b""), None)  # superseded
        record.extra["view"] = b""  # the script rebuilt it
        self._remember(record.session_id, due)
        return None

    async def delete(self, token: str, record: SessionRecord) -> None:
        self._due.pop(record.session_id, None)
        ids = [token_id(token)]
        alias_of = record.extra.get("alias_of")
        if alias_of:
            # Logging out on the old cookie during the grace ends the new session too
            # (and _end does so for a rotation that retired the ID since the load).
            ids.append(alias_of)
            if self.on_end is not None:
                self.on_end(alias_of)
        also = []
        if record.user_id is not None:
            also.append(self.client.zrem(self._user_key(record.user_id), record.session_id))
        await self._end(ids, also=also)

    async def exists(self, session_id: str) -> bool:
        """Whether the session ``session_id`` is live (not ended, not expired, not a
        rotated session's grace alias). One command."""
        meta, alias = await self._run(self.client.hmget(self._key(session_id), ("m", "a")))
        return meta is not None and alias is None

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    # -- per-user operations ---------------------------------------------------------

    async def _end(
        self,
        ids: Sequence[str],
        *,
        also: Sequence[Awaitable[Any]] = (),
        gone: Collection[str] = (),
    ) -> list[bool]:
        """Delete the sessions ``ids``, each with the session it turned out to be
        the grace alias of when it went, and so on: a rotation that retired one of
        them after the caller looked must not leave its new session alive. And each
        with its own grace aliases (the ID it was rotated from, ``p``, and so on), each
        only while it is still the alias of the session ended: a logout leaves no
        alias serving the session it ended. Up to _MAX_HOPS rotations either way. One
        single-key script each (on Cluster they live in different slots), sent
        with the commands ``also``, which delete ``gone``. True for each of ``ids``
        that existed."""
        replies = await self._run(
            asyncio.gather(*(_end(self.client, self._key(i)) for i in ids), *also)
        )
        replies = replies[: len(ids)]
        ended = {*ids, *gone}
        newer, older = self._next_ends(ids, replies, ended)
        for _ in range(_MAX_HOPS):
            if not newer and not older:
                break
            if self.on_end is not None:
                for session_id in newer:
                    self.on_end(session_id)
            more = await self._run(
                asyncio.gather(
                    *(_end(self.client, self._key(i)) for i in newer),
                    *(_end(self.client, self._key(i), of) for i, of in older),
                )
            )
            reached = [*newer, *(i for i, _ in older)]
            if self.on_end is not None:
                for (deleted, _, _), (session_id, _) in zip(more[len(newer) :], older, strict=True):
                    if deleted:
                        self.on_end(session_id)
            newer, older = self._next_ends(reached, more, ended)
        return [bool(deleted) for deleted, _, _ in replies]

    @staticmethod
    def _next_ends(
        ids: Sequence[str], replies: Sequence[Any], ended: set[str]
    ) -> tuple[list[str], list[tuple[str, str]]]:
        """From _END's replies for ``ids``: the sessions they were grace aliases of,
        and (ID, the ended session it must still be the alias of) for those they were
        rotated from; none in ``ended``, which they join."""
        newer: list[str] = []
        older: list[tuple[str, str]] = []
        for session_id, (_, alias, previous) in zip(ids, replies, strict=True):
            forward = _id(alias) if alias else None
            if forward is not None and forward not in ended:
                ended.add(forward)
                newer.append(forward)
            back = _id(previous) if previous else None
            if back is not None and back not in ended:
                ended.add(back)
                older.append((back, session_id))
        return newer, older

    def _index_add(
        self, user_id: str, session_id: str, record: SessionRecord, now: float
    ) -> Awaitable[Any]:
        """Enter ``session_id`` in the user's index (pruning expired members); the
        script answers every member."""
        # The score is the latest the session can live, so pruning by score never
        # drops a live session, and the index key outlives every member; a write
        # that moves that moment later re-scores it (_reindex).
        score = _index_score(record, now)
        return _index(self.client, self._user_key(user_id), session_id, repr(score), repr(now), "")

    async def _reindex(self, record: SessionRecord, now: float) -> list[Any]:
        """Re-score a bound session whose deadline a save or touch is about to move
        later: one more single-key command (in the index key's Cluster slot), paid
        only then. It runs before that write, so a failure (raised) leaves the
        session as it was, and the next write tries again; a write that then finds
        the session gone leaves a dead member, which the next prune drops."""
        assert record.user_id is not None
        members: list[Any] = await self._run(
            self._index_add(record.user_id, record.session_id, record, now)
        )
        return members

    async def _states(self, ids: Sequence[str]) -> list[_State | None]:
        """Each session's (created, last seen, IP, user agent, user ID, alias of, last
        rotation); None for one that is gone or unreadable."""
        replies: Any = await self._run(
            asyncio.gather(*(self.client.hmget(self._key(i), ("m", "s", "a")) for i in ids))
        )
        return [_state(*reply) for reply in replies]

    async def _prune(
        self,
        user_id: str,
        ids: Sequence[str],
        now: float,
        *,
        keep_newest: int | None = None,
        current: str | None = None,
    ) -> list[tuple[str, _State]]:
        """Drop index members whose session is gone or belongs to someone else; with
        ``keep_newest``, end the least recently logged-in (or rotated) sessions
        beyond that number, never ``current`` (the login being saved); returns the
        live sessions, oldest first."""
        if not ids:
            return []
        states = dict(zip(ids, await self._states(ids), strict=True))
        live = []
        dead = []
        for session_id, state in states.items():
            if state is None or state.user_id != user_id:  # gone, rebound or unbound
                dead.append(session_id)
            elif state.alias_of is None:
                live.append((session_id, state))
        live.sort(key=lambda item: item[1].created_at)
        excess = 0 if keep_newest is None else len(live) - keep_newest
        if excess > 0:
            # By login, not creation: a login keeps the creation time of the
            # anonymous session it rotates, which may predate the other devices'.
            others = [item for item in live if item[0] != current]
            others.sort(key=lambda item: item[1].rotated_at)
            evicted = others[:excess]
            gone = {i for i, _ in evicted}
            live = [item for item in live if item[0] not in gone]
            for session_id, _ in evicted:
                logger.info("user's session limit reached: ended session %s", session_id[:12])
                if self.on_end is not None:
                    self.on_end(session_id)
                if self.events:
                    await self.events.emit(
                        SessionEvent(
                            "revoked",
                            session_hash(session_id),
                            user_id,
                            reason="session limit per user",
                        )
                    )
            # Ended as a revoke ends them: with their grace aliases, and through _end,
            # so a rotation racing the eviction does not leave its new session alive.
            aliases = _aliases_into(gone, states)
            await self._end(
                list(gone), also=[self.client.delete(self._key(i)) for i in aliases], gone=aliases
            )
            dead += [*gone, *aliases]
        if dead:
            await self._run(self.client.zrem(self._user_key(user_id), *dead))
        return live

    async def _user_ids(self, user_id: str) -> list[str]:
        """Every ID in the user's index: live sessions and grace aliases."""
        return await self._members(user_id)

    async def _members(self, user_id: str) -> list[str]:
        raw = await self._run(self.client.zrange(self._user_key(user_id), 0, -1))
        return _ids(raw)

    async def list_sessions(self, user_id: str, *, current: str | None = None) -> list[SessionInfo]:
        now = self.clock()
        live = await self._prune(user_id, await self._members(user_id), now)
        ttls = await self._run(asyncio.gather(*(self.client.pttl(self._key(i)) for i, _ in live)))
        return [
            SessionInfo(
                session_id=session_id,
                user_id=user_id,
                created_at=state.created_at,
                last_seen=state.last_seen,
                expires_at=now + ttl / 1000 if ttl > 0 else None,
                ip=state.ip,
                user_agent=state.user_agent,
                current=session_id == current,
            )
            for (session_id, state), ttl in zip(live, ttls, strict=True)
        ]

    async def revoke(self, session_id: str) -> bool:
        (state,) = await self._states([session_id])
        if state is not None and state.alias_of is not None:
            return False
        doomed = [session_id]
        owner = None if state is None else state.user_id
        if owner is not None:
            members = await self._members(owner)
            others = [m for m in members if m != session_id]
            states = dict(zip(others, await self._states(others), strict=True))
            doomed += _aliases_into({session_id}, states)
        deleted = await self._end(doomed)
        if owner is not None:
            await self._run(self.client.zrem(self._user_key(owner), *doomed))
        if deleted[0] and self.events:
            await self.events.emit(SessionEvent("revoked", session_hash(session_id), owner))
        return bool(deleted[0])

    async def revoke_user(self, user_id: str, *, keep: str | None = None) -> int:
        members = await self._members(user_id)
        states = dict(zip(members, await self._states(members), strict=True))
        kept = set()
        if keep is not None:
            kept.add(keep)
            state = states.get(keep)
            if state is not None and state.alias_of is not None:
                kept.add(state.alias_of)  # rotated meanwhile: it lives on under its new ID
        # A member retired by a rotation between the two reads above: the index read
        # may have missed the rotation's new session (it joins the index just before
        # the retirement). It ends too if it is this user's.
        missed = list(
            {
                state.alias_of
                for session_id, state in states.items()
                if state is not None
                and state.alias_of is not None
                and state.alias_of not in states
                and session_id not in kept
                and state.alias_of not in kept
            }
        )
        if missed:
            for session_id, state in zip(missed, await self._states(missed), strict=True):
                if state is not None and state.user_id == user_id:
                    members.append(session_id)
                    states[session_id] = state
        doomed = []
        live = []
        for session_id in members:
            state = states[session_id]
            alias = None if state is None else state.alias_of
            if session_id in kept or alias in kept:
                continue
            doomed.append(session_id)
            if state is not None and alias is None:
                live.append(session_id)
        if doomed:
            # A session live when read that a rotation retires before it goes takes
            # the rotation's new session with it (_end). One that was already a grace
            # alias is only deleted: its session is among the members, or was rebound
            # to another user, whose it now is.
            aliases = [i for i in doomed if i not in live]
            await self._end(
                live, also=[self.client.delete(self._key(i)) for i in aliases], gone=aliases
            )
            await self._run(self.client.zrem(self._user_key(user_id), *doomed))
            if self.events:
                for session_id in live:
                    await self.events.emit(
                        SessionEvent("revoked", session_hash(session_id), user_id)
                    )
        return len(live)

    async def revoke_all(self) -> int:
        """End every session under this backend's prefix, bound to a user or not,
        with their grace aliases and the per-user indexes; returns how many live
        sessions ended. One SCAN pass (every master of a Cluster), each step within
        ``operation_timeout``, and single-key deletes in batches; a session created
        while it runs may survive it. Only this backend's keys go: a key under the
        prefix whose name no session or index key has, or that has another type
        (the app's own, when it shares the prefix), is left alone, and counted in a
        log line. Raises :class:`BackendUnavailable` when Redis fails."""
        ended = 0
        other_names = other_types = 0
        batch: list[str] = []
        async for key in self._scan("s:"):
            session_id = _id(key)
            if session_id is None:
                other_names += 1
                continue
            batch.append(session_id)
            if len(batch) >= 500:
                done, skipped = await self._end_all(batch)
                ended, other_types = ended + done, other_types + skipped
                batch = []
        done, skipped = await self._end_all(batch)
        ended, other_types = ended + done, other_types + skipped
        indexes: list[str] = []
        async for key in self._scan("u:"):
            tag = key.decode("latin-1")  # never fails; a non-ASCII byte then fails the match
            if _INDEX_TAG.fullmatch(tag):
                indexes.append(f"{self.prefix}u:{tag}")
            else:
                other_names += 1
        for first in range(0, len(indexes), 500):
            chunk = indexes[first : first + 500]
            kinds = await self._run(asyncio.gather(*(self.client.type(k) for k in chunk)))
            mine = [k for k, kind in zip(chunk, kinds, strict=True) if kind == b"zset"]
            other_types += len(chunk) - len(mine)
            await self._run(asyncio.gather(*(self.client.delete(k) for k in mine)))
        if other_names or other_types:
            logger.warning(
                "revoke_all left %d keys under the prefix %r alone: not this backend's "
                "(%d with a name none of its keys has, %d of another type)",
                other_names + other_types,
                self.prefix,
                other_names,
                other_types,
            )
        return ended

    async def _scan(self, kind: str) -> AsyncIterator[bytes]:
        """The names, after ``{prefix}{kind}``, of the keys that start so: a SCAN of
        every master, each step bounded by ``operation_timeout``."""
        start = len(self.prefix) + len(kind)
        # Glob characters in the prefix stand for themselves.
        pattern = _GLOB.sub(r"\\\g<0>", self.prefix + kind) + "*"
        keys = self.client.scan_iter(match=pattern, count=1000)
        while (key := await self._run(anext(keys, None))) is not None:
            yield key[start:]

    async def _end_all(self, ids: list[str]) -> tuple[int, int]:
        """End the sessions (and aliases) ``ids`` for revoke_all: how many live
        sessions ended, and how many of ``ids`` were left alone, not being hashes."""
        if not ids:
            return 0, 0
        self._due.clear()
        kinds = await self._run(asyncio.gather(*(self.client.type(self._key(i)) for i in ids)))
        others = len(ids)
        ids = [i for i, kind in zip(ids, kinds, strict=True) if kind == b"hash"]
        others -= len(ids)
        states = await self._states(ids)
        await self._run(asyncio.gather(*(self.client.delete(self._key(i)) for i in ids)))
        live = [
            (i, state) for i, state in zip(ids, states, strict=True) if state and not state.alias_of
        ]
        if self.events:
            for session_id, state in live:
                await self.events.emit(
                    SessionEvent(
                        "revoked", session_hash(session_id), state.user_id, reason="all sessions"
                    )
                )
        return len(live), others
