"""Where conversation sessions live: one interface, kept in memory or in Redis.

A session is identified by (caller tenant, route id, session id); the tenant is the
caller's namespace, so a session id chosen by two tenants names two sessions, even on a
route shared between them. A session holds:

- its messages, oldest first, each with the token count fixed when it was stored (so
  trimming and prompt building never re-tokenize) and a sequence number;
- an optional running summary (``strategy: summarize``) with its token count and a
  version bumped at every fold;
- an *epoch*: a random id set when the session is created, so a fold planned against a
  session that was deleted and started again is refused.

Each stored message has a header ``<flag><seq>,<tokens>`` where ``flag`` is ``c`` for a
tool result (it continues the unit of the assistant message that called the tool and is
never separated from it) and ``n`` for any other message. Its size for the byte cap is that
of ``<header>,<message JSON>`` in both stores, so the contract suite checks one behaviour.

Redis layout (every key of one (tenant, session id) shares a Redis Cluster slot through
the hash tag ``{<tenant>:<session id>}``; tenants are DNS labels and route ids
``namespace/name``, neither contains ``:``, and session ids never contain braces)::

    kanal:ctx:{t:s}:r:<route id>:m   LIST  message JSON, oldest first
    kanal:ctx:{t:s}:r:<route id>:i   LIST  their headers, in step with :m
    kanal:ctx:{t:s}:r:<route id>:h   HASH  epoch, seq (last assigned), tok (tokens of the
                                           messages), bytes (their size), sum, sumt, sumv
                                           (summary, its tokens, its version)
    kanal:ctx:{t:s}:routes           SET   route ids with a session, for GET/DELETE

Headers live apart from the messages so that finding where the budget cuts walks short
strings only, and a load whose history fits whole is two LRANGEs joined in C: the load
script answers with two bulk strings (headers joined by ``;``, messages as one JSON array),
one ``orjson.loads`` on the gateway side.

The lists and hash expire ``ttl`` after the last appended turn (sliding); the set lives as
long as the longest of them. Appending a turn, trimming it to the caps and refreshing the
TTLs is one Lua script, so concurrent turns of one session (from any number of gateway
processes) interleave whole and lose nothing; a fold removes exactly the folded prefix
(by sequence number) in another script, after checking the epoch and summary version it
was planned against.
"""

from __future__ import annotations

import abc
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
import redis.asyncio as aioredis
from redis.exceptions import WatchError

Json = dict[str, Any]

CONTINUATION_ROLES = frozenset({"tool", "function"})
"""Messages that answer a call of the assistant message before them."""


@dataclass(frozen=True, slots=True)
class SessionKey:
    tenant: str
    """The caller's namespace."""
    route: str
    """Route id, ``namespace/name``."""
    session: str

    def __post_init__(self) -> None:
        if not self.session or "{" in self.session or "}" in self.session:
            raise ValueError(f"invalid session id {self.session!r}")


@dataclass(frozen=True, slots=True)
class Entry:
    """A message to append, with its token count."""

    message: Json
    tokens: int


class StoredMessage(NamedTuple):
    """A stored message (a tuple: thousands are built per second on the request path)."""

    seq: int
    tokens: int
    continuation: bool
    """A tool result: part of the unit of the assistant message before it."""
    message: Json


@dataclass(slots=True)
class History:
    """A session as loaded: all its messages, or the newest that fit a budget."""

    messages: list[StoredMessage] = field(default_factory=list)
    summary: str | None = None
    summary_tokens: int = 0
    summary_version: int = 0
    tokens: int = 0
    """Tokens of every stored message (also those not loaded)."""
    epoch: str = ""
    """Empty when the session does not exist."""
    expires_in: float | None = None
    """Seconds to live (filled by ``load_all`` and ``sessions``)."""

    @property
    def exists(self) -> bool:
        return bool(self.epoch)


@dataclass(frozen=True, slots=True)
class Appended:
    """The session right after an append (and its trim)."""

    tokens: int
    summary_tokens: int
    count: int
    bytes: int
    dropped: int
    """Oldest messages dropped by the caps."""


def element_size(seq: int, tokens: int, data: bytes) -> int:
    """Bytes a message counts for the byte cap: ``<flag><seq>,<tokens>,<message JSON>``."""
    return len(b"%d,%d" % (seq, tokens)) + 2 + len(data)


def _whole_units(messages: list[StoredMessage]) -> list[StoredMessage]:
    """Drop leading tool results whose calling message was not loaded (or was trimmed)."""
    start = 0
    while start < len(messages) and messages[start].continuation:
        start += 1
    return messages[start:] if start else messages


def _payload(entry: Entry) -> tuple[bytes, int, bytes]:
    continuation = entry.message.get("role") in CONTINUATION_ROLES
    return (b"c" if continuation else b"n"), max(0, int(entry.tokens)), orjson.dumps(entry.message)


def new_epoch() -> str:
    return os.urandom(6).hex()


class SessionStore(abc.ABC):
    """Conversation sessions; every method is atomic with respect to the others."""

    @abc.abstractmethod
    async def load(self, key: SessionKey, budget: int) -> History:
        """The summary and the newest messages whose tokens, with the summary's, fit
        ``budget`` — always all of the newest unit, even over budget — oldest first,
        starting with a whole unit. ``tokens`` counts every stored message."""

    @abc.abstractmethod
    async def load_all(self, key: SessionKey) -> History:
        """Everything stored for the session."""

    @abc.abstractmethod
    async def append(
        self,
        key: SessionKey,
        entries: list[Entry],
        *,
        ttl: float,
        max_messages: int,
        max_bytes: int,
    ) -> Appended:
        """Append in order, then drop the oldest messages while the session holds more than
        ``max_messages`` or ``max_bytes`` (never leaving a tool result without its call),
        and make the session expire ``ttl`` seconds from now. Atomic."""

    @abc.abstractmethod
    async def fold(
        self,
        key: SessionKey,
        *,
        epoch: str,
        summary_version: int,
        through_seq: int,
        summary: str,
        summary_tokens: int,
    ) -> int | None:
        """Replace the summary and remove the messages up to ``through_seq`` (those still
        there), if the session is still at ``epoch`` and ``summary_version``; else change
        nothing and return None. Returns how many messages it removed. Atomic."""

    @abc.abstractmethod
    async def sessions(self, tenant: str, session: str) -> dict[str, History]:
        """Route id -> full history of every live session ``session`` of ``tenant``."""

    @abc.abstractmethod
    async def delete(self, tenant: str, session: str) -> int:
        """Erase ``session`` of ``tenant`` on every route; how many route sessions it erased."""


# -- in memory -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Session:
    epoch: str
    elements: deque[tuple[StoredMessage, int]] = field(default_factory=deque)
    """Messages (decoded once, at append: loads cost no parsing) and their element bytes."""
    seq: int = 0
    tokens: int = 0
    bytes: int = 0
    summary: str | None = None
    summary_tokens: int = 0
    summary_version: int = 0
    expires: float = 0.0

    def history(self, messages: list[StoredMessage], now: float) -> History:
        return History(
            messages=messages,
            summary=self.summary,
            summary_tokens=self.summary_tokens,
            summary_version=self.summary_version,
            tokens=self.tokens,
            epoch=self.epoch,
            expires_in=max(0.0, self.expires - now),
        )

    def drop_first(self) -> StoredMessage:
        stored, size = self.elements.popleft()
        self.tokens -= stored.tokens
        self.bytes -= size
        return stored


class MemorySessionStore(SessionStore):
    """This process's memory (``kanal up``, single replica). No awaits inside an operation,
    so each one is atomic on the event loop. Expired sessions go lazily and in sweeps.

    Messages are stored as copies (decoded from the JSON they are sized by) and handed out
    shared: readers must not mutate them — the prompt builder only places them in new lists.
    """

    SWEEP_SECONDS = 60.0

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._sessions: dict[tuple[str, str], dict[str, _Session]] = {}
        self._next_sweep = clock() + self.SWEEP_SECONDS

    def _routes(self, tenant: str, session: str, now: float) -> dict[str, _Session]:
        routes = self._sessions.get((tenant, session))
        if routes is None:
            return {}
        for route in [r for r, s in routes.items() if s.expires <= now]:
            del routes[route]
        if not routes:
            del self._sessions[(tenant, session)]
        return routes

    def _get(self, key: SessionKey, now: float) -> _Session | None:
        return self._routes(key.tenant, key.session, now).get(key.route)

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.SWEEP_SECONDS
        for tenant, session in list(self._sessions):
            self._routes(tenant, session, now)

    async def load(self, key: SessionKey, budget: int) -> History:
        now = self._clock()
        found = self._get(key, now)
        if found is None:
            return History()
        avail = budget - found.summary_tokens
        taken: list[StoredMessage] = []
        total = 0
        head = False
        for stored, _ in reversed(found.elements):
            total += stored.tokens
            if head and total > avail:
                break
            taken.append(stored)
            head = head or not stored.continuation
        taken.reverse()
        return found.history(_whole_units(taken), now)

    async def load_all(self, key: SessionKey) -> History:
        now = self._clock()
        found = self._get(key, now)
        if found is None:
            return History()
        return found.history([stored for stored, _ in found.elements], now)

    async def append(
        self,
        key: SessionKey,
        entries: list[Entry],
        *,
        ttl: float,
        max_messages: int,
        max_bytes: int,
    ) -> Appended:
        now = self._clock()
        self._sweep(now)
        routes = self._sessions.setdefault((key.tenant, key.session), {})
        found = routes.get(key.route)
        if found is None or found.expires <= now:
            found = routes[key.route] = _Session(epoch=new_epoch())
        for entry in entries:
            flag, tokens, data = _payload(entry)
            found.seq += 1
            continuation = flag == b"c"
            size = element_size(found.seq, tokens, data)
            stored = StoredMessage(found.seq, tokens, continuation, orjson.loads(data))
            found.elements.append((stored, size))
            found.tokens += tokens
            found.bytes += size
        dropped = 0
        elements = found.elements
        while elements and (
            len(elements) > max_messages or found.bytes > max_bytes or elements[0][0].continuation
        ):
            found.drop_first()
            dropped += 1
        found.expires = now + ttl
        return Appended(found.tokens, found.summary_tokens, len(elements), found.bytes, dropped)

    async def fold(
        self,
        key: SessionKey,
        *,
        epoch: str,
        summary_version: int,
        through_seq: int,
        summary: str,
        summary_tokens: int,
    ) -> int | None:
        found = self._get(key, self._clock())
        if found is None or found.epoch != epoch or found.summary_version != summary_version:
            return None
        removed = 0
        while found.elements and found.elements[0][0].seq <= through_seq:
            found.drop_first()
            removed += 1
        found.summary, found.summary_tokens = summary, summary_tokens
        found.summary_version += 1
        return removed

    async def sessions(self, tenant: str, session: str) -> dict[str, History]:
        now = self._clock()
        return {
            route: found.history([stored for stored, _ in found.elements], now)
            for route, found in self._routes(tenant, session, now).items()
        }

    async def delete(self, tenant: str, session: str) -> int:
        routes = self._routes(tenant, session, self._clock())
        self._sessions.pop((tenant, session), None)
        return len(routes)


# -- Redis -----------------------------------------------------------------------------------

_LOAD = """
-- KEYS[1] messages, KEYS[2] headers, KEYS[3] meta; ARGV[1] token budget for the summary
-- and the messages. Returns the meta fields, then the loaded messages oldest first as two
-- blobs: headers joined by ';', messages as one JSON array.
local meta = redis.call('HMGET', KEYS[3], 'sum', 'sumt', 'sumv', 'tok', 'epoch')
if not meta[5] then return {false, false, false, false, false, '', '[]'} end
local avail = tonumber(ARGV[1]) - tonumber(meta[2] or 0)
local start = 0
if tonumber(meta[4] or 0) > avail then
  local total, head, done = 0, false, false
  local stop = redis.call('LLEN', KEYS[2]) - 1
  while stop >= 0 and not done do
    local from = math.max(0, stop - 63)
    local hs = redis.call('LRANGE', KEYS[2], from, stop)
    for j = #hs, 1, -1 do
      local h = hs[j]
      total = total + tonumber(string.sub(h, string.find(h, ',', 1, true) + 1))
      if head and total > avail then
        done = true
        break
      end
      start = from + j - 1
      if string.byte(h, 1) ~= 99 then head = true end
    end
    stop = from - 1
  end
end
local hs = redis.call('LRANGE', KEYS[2], start, -1)
local ms = redis.call('LRANGE', KEYS[1], start, -1)
return {meta[1], meta[2], meta[3], meta[4], meta[5],
  table.concat(hs, ';'), '[' .. table.concat(ms, ',') .. ']'}
"""

_APPEND = """
-- KEYS[1] messages, KEYS[2] headers, KEYS[3] meta, KEYS[4] route index
-- ARGV: ttl ms, max messages, max bytes, route id, epoch, then (flag, tokens, json)...
redis.call('HSETNX', KEYS[3], 'epoch', ARGV[5])
local meta = redis.call('HMGET', KEYS[3], 'seq', 'tok', 'bytes', 'sumt')
local seq, tok, size = tonumber(meta[1] or 0), tonumber(meta[2] or 0), tonumber(meta[3] or 0)
local hs, ms = {}, {}
for i = 6, #ARGV, 3 do
  seq = seq + 1
  local h = ARGV[i] .. seq .. ',' .. ARGV[i + 1]
  hs[#hs + 1] = h
  ms[#ms + 1] = ARGV[i + 2]
  tok = tok + tonumber(ARGV[i + 1])
  size = size + #h + 1 + #ARGV[i + 2]
end
local n
if #hs > 0 then
  redis.call('RPUSH', KEYS[1], unpack(ms))
  n = redis.call('RPUSH', KEYS[2], unpack(hs))
else
  n = redis.call('LLEN', KEYS[2])
end
local maxn, maxb, dropped = tonumber(ARGV[2]), tonumber(ARGV[3]), 0
while n > 0 do
  local h = redis.call('LINDEX', KEYS[2], 0)
  if n <= maxn and size <= maxb and string.byte(h, 1) ~= 99 then break end
  redis.call('LPOP', KEYS[2])
  local m = redis.call('LPOP', KEYS[1])
  n = n - 1
  dropped = dropped + 1
  tok = tok - tonumber(string.sub(h, string.find(h, ',', 1, true) + 1))
  size = size - (#h + 1 + #m)
end
redis.call('HSET', KEYS[3], 'seq', seq, 'tok', tok, 'bytes', size)
local ttl = tonumber(ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
redis.call('SADD', KEYS[4], ARGV[4])
if redis.call('PTTL', KEYS[4]) < ttl then redis.call('PEXPIRE', KEYS[4], ttl) end
return {tok, tonumber(meta[4] or 0), n, size, dropped}
"""

_FOLD = """
-- KEYS[1] messages, KEYS[2] headers, KEYS[3] meta
-- ARGV: epoch, summary version, through seq, summary, summary tokens
local meta = redis.call('HMGET', KEYS[3], 'epoch', 'sumv', 'tok', 'bytes')
if meta[1] ~= ARGV[1] or (meta[2] or '0') ~= ARGV[2] then return -1 end
local last, removed = tonumber(ARGV[3]), 0
local tok, size = tonumber(meta[3] or 0), tonumber(meta[4] or 0)
while true do
  local h = redis.call('LINDEX', KEYS[2], 0)
  if not h then break end
  local comma = string.find(h, ',', 1, true)
  if tonumber(string.sub(h, 2, comma - 1)) > last then break end
  redis.call('LPOP', KEYS[2])
  local m = redis.call('LPOP', KEYS[1])
  removed = removed + 1
  tok = tok - tonumber(string.sub(h, comma + 1))
  size = size - (#h + 1 + #m)
end
redis.call('HSET', KEYS[3], 'sum', ARGV[4], 'sumt', ARGV[5], 'sumv', tonumber(ARGV[2]) + 1,
  'tok', tok, 'bytes', size)
return removed
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _int(value: bytes | None) -> int:
    return int(value) if value else 0


def _history(
    meta: Sequence[Any], messages: list[StoredMessage], expires_in: float | None = None
) -> History:
    """A History from the meta fields ``sum, sumt, sumv, tok, epoch`` of a session that
    exists (epoch set)."""
    summary, sumt, sumv, tok, epoch = meta
    return History(
        messages=messages,
        summary=summary.decode() if summary is not None else None,
        summary_tokens=_int(sumt),
        summary_version=_int(sumv),
        tokens=_int(tok),
        epoch=epoch.decode(),
        expires_in=expires_in,
    )


def _stored(headers: list[bytes], messages: list[Json]) -> list[StoredMessage]:
    out = []
    for header, message in zip(headers, messages, strict=True):
        seq, tokens = header[1:].split(b",")
        out.append(StoredMessage(int(seq), int(tokens), header[:1] == b"c", message))
    return out


class RedisSessionStore(SessionStore):
    """Sessions shared by every gateway process on one Redis (or Redis Cluster)."""

    PREFIX = "kanal:ctx:"

    def __init__(self, client: aioredis.Redis) -> None:
        self.redis = client
        self._load = client.register_script(_LOAD)
        self._append = client.register_script(_APPEND)
        self._fold = client.register_script(_FOLD)

    def _tag(self, tenant: str, session: str) -> str:
        return f"{self.PREFIX}{{{tenant}:{session}}}"

    def keys(self, key: SessionKey) -> tuple[str, str, str, str]:
        """(messages list, headers list, meta hash, route index) of a session."""
        base = f"{self._tag(key.tenant, key.session)}:r:{key.route}"
        return f"{base}:m", f"{base}:i", f"{base}:h", f"{self._tag(key.tenant, key.session)}:routes"

    async def load(self, key: SessionKey, budget: int) -> History:
        summary, sumt, sumv, tok, epoch, headers, messages = await self._load(
            keys=list(self.keys(key)[:3]), args=[budget]
        )
        if not epoch:
            return History()
        stored = _stored(headers.split(b";"), orjson.loads(messages)) if headers else []
        return _history((summary, sumt, sumv, tok, epoch), _whole_units(stored))

    async def _read(self, keys: list[SessionKey]) -> list[History]:
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in keys:
                messages_key, headers_key, meta_key, _ = self.keys(key)
                pipe.hmget(meta_key, "sum", "sumt", "sumv", "tok", "epoch")
                pipe.lrange(headers_key, 0, -1)
                pipe.lrange(messages_key, 0, -1)
                pipe.pttl(meta_key)
            replies = await pipe.execute()
        out = []
        for i in range(0, len(replies), 4):
            meta, headers, messages, pttl = replies[i : i + 4]
            if not meta[4]:  # no epoch: no such session
                out.append(History())
                continue
            stored = _stored(headers, [orjson.loads(m) for m in messages])
            out.append(_history(meta, stored, expires_in=max(0, pttl) / 1000.0))
        return out

    async def load_all(self, key: SessionKey) -> History:
        [history] = await self._read([key])
        return history

    async def append(
        self,
        key: SessionKey,
        entries: list[Entry],
        *,
        ttl: float,
        max_messages: int,
        max_bytes: int,
    ) -> Appended:
        args: list[Any] = [
            max(1, int(ttl * 1000)),
            max_messages,
            max_bytes,
            key.route,
            new_epoch(),
        ]
        for entry in entries:
            args.extend(_payload(entry))
        tok, sumt, count, size, dropped = await self._append(keys=list(self.keys(key)), args=args)
        return Appended(int(tok), int(sumt), int(count), int(size), int(dropped))

    async def fold(
        self,
        key: SessionKey,
        *,
        epoch: str,
        summary_version: int,
        through_seq: int,
        summary: str,
        summary_tokens: int,
    ) -> int | None:
        removed = await self._fold(
            keys=list(self.keys(key)[:3]),
            args=[epoch, summary_version, through_seq, summary, summary_tokens],
        )
        return None if int(removed) < 0 else int(removed)

    async def sessions(self, tenant: str, session: str) -> dict[str, History]:
        members = await self.redis.smembers(f"{self._tag(tenant, session)}:routes")
        routes = sorted(_text(m) for m in members)
        if not routes:
            return {}
        found = await self._read([SessionKey(tenant, r, session) for r in routes])
        return {r: h for r, h in zip(routes, found, strict=True) if h.exists}

    async def delete(self, tenant: str, session: str) -> int:
        index = f"{self._tag(tenant, session)}:routes"
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(index)
                    routes = sorted(_text(m) for m in await pipe.smembers(index))
                    pipe.multi()  # type: ignore[no-untyped-call]
                    for route in routes:
                        messages_key, headers_key, meta_key, _ = self.keys(
                            SessionKey(tenant, route, session)
                        )
                        pipe.delete(meta_key)
                        pipe.delete(messages_key, headers_key)
                    pipe.delete(index)
                    replies = await pipe.execute()
                except WatchError:
                    continue
                # a route counts when its meta hash (which every live session has) was erased
                return sum(int(r) for r in replies[0 : 2 * len(routes) : 2])
