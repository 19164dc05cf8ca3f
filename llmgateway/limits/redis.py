"""Counters shared by every replica: the same rules as `local`, as Redis scripts.

Admission is one script call (one round trip): it reads every counter the call touches, and only
if all limits hold does it apply every reservation, so two replicas can never both take the last
slot. Time is Redis's own clock, so replicas with skewed clocks still share one window.
Admissions that arrive while a round trip is in flight go out together as one pipeline, and
settlements are queued to ride on the next admission, so a replica makes at most one round trip
per request (fewer under load); settlements no admission carries within `SETTLE_DELAY` go alone.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from .rules import Check, Ticket, Verdict

log = logging.getLogger("llmgateway.limits")

PREFIX = "llmgw:lim:"
SETTLE_DELAY = 0.02
MAX_BATCH = 500

ADMIT = """
local t = redis.call('TIME')
local second = tonumber(t[1])
local now = second + tonumber(t[2]) / 1000000
local s = tonumber(ARGV[1])
for i = 1, s do
  local b = 1 + (i - 1) * 4
  local kind, delta, rid, at = ARGV[b + 1], tonumber(ARGV[b + 2]), ARGV[b + 3], ARGV[b + 4]
  if kind == 'tpm' then
    if redis.call('HEXISTS', KEYS[i], at) == 1 then redis.call('HINCRBY', KEYS[i], at, delta) end
  elseif kind == 'conc' then
    redis.call('ZREM', KEYS[i], rid)
  elseif kind ~= 'rpm' and delta ~= 0 and redis.call('EXISTS', KEYS[i]) == 1 then
    if redis.call('INCRBY', KEYS[i], delta) < 0 then redis.call('SET', KEYS[i], 0, 'KEEPTTL') end
  end
end
local a = 1 + s * 4
local rid, lease = ARGV[a + 1], tonumber(ARGV[a + 2])
local n = #KEYS - s
local used, resets = {}, {}
local refused, retry = 0, 0
for i = 1, n do
  local key, b = KEYS[s + i], a + 2 + (i - 1) * 4
  local kind, limit, amount, pend = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local cur, reset, wait = 0, 0, 0
  if kind == 'rpm' or kind == 'tpm' then
    local h = redis.call('HGETALL', key)
    local newest = nil
    for j = 1, #h, 2 do
      local sec = tonumber(h[j])
      if sec <= second - 60 then
        redis.call('HDEL', key, h[j])
      else
        cur = cur + tonumber(h[j + 1])
        if newest == nil or sec > newest then newest = sec end
      end
    end
    if newest then reset = newest + 60 - now end
    wait = 60
    local need = cur + amount - limit
    if need > 0 then
      local live = {}
      for j = 1, #h, 2 do
        local sec = tonumber(h[j])
        if sec > second - 60 then live[#live + 1] = {sec, tonumber(h[j + 1])} end
      end
      table.sort(live, function(x, y) return x[1] < y[1] end)
      local freed = 0
      for _, sv in ipairs(live) do
        freed = freed + sv[2]
        if freed >= need then wait = sv[1] + 60 - now break end
      end
    end
  elseif kind == 'conc' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    cur = redis.call('ZCARD', key)
    wait = 1
  else
    cur = tonumber(redis.call('GET', key) or '0')
    reset = pend - now
    wait = reset
  end
  used[i], resets[i] = cur, reset
  if refused == 0 and cur + amount > limit then refused, retry = i, wait end
end
if refused == 0 then
  for i = 1, n do
    local key, b = KEYS[s + i], a + 2 + (i - 1) * 4
    local kind, amount, pend = ARGV[b + 1], tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
    if kind == 'rpm' or kind == 'tpm' then
      redis.call('HINCRBY', key, second, amount)
      redis.call('EXPIRE', key, 120)
      resets[i] = second + 60 - now
    elseif kind == 'conc' then
      redis.call('ZADD', key, now + lease, rid)
      redis.call('EXPIRE', key, math.ceil(lease) + 60)
    else
      redis.call('INCRBY', key, amount)
      redis.call('EXPIREAT', key, math.ceil(pend) + 3600)
    end
    used[i] = used[i] + amount
  end
end
local out = {refused, tostring(retry), second}
for i = 1, n do
  out[#out + 1] = used[i]
  out[#out + 1] = tostring(resets[i])
end
return out
"""

RENEW = """
local t = redis.call('TIME')
local expires = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
local renewed = 0
for i = 1, #KEYS do
  if redis.call('ZSCORE', KEYS[i], ARGV[i + 1]) then
    redis.call('ZADD', KEYS[i], expires, ARGV[i + 1])
    redis.call('EXPIRE', KEYS[i], math.ceil(tonumber(ARGV[1])) + 60)
    renewed = renewed + 1
  end
end
return renewed
"""

SEED = """
for i = 1, #KEYS do
  local value, expire_at = tonumber(ARGV[(i - 1) * 2 + 1]), tonumber(ARGV[(i - 1) * 2 + 2])
  if tonumber(redis.call('GET', KEYS[i]) or '0') < value then
    redis.call('SET', KEYS[i], value)
    redis.call('EXPIREAT', KEYS[i], expire_at)
  end
end
return 1
"""


class RedisLimiter:
    name = "redis"

    def __init__(self, client: Redis) -> None:
        self.client = client
        self._script = client.register_script(ADMIT)
        self._seed = client.register_script(SEED)
        self._renew = client.register_script(RENEW)
        self._queue: list[tuple[str, list[str | int]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._admits: list[tuple[list[str], list[str | int | float], asyncio.Future]] = []
        self._batches: set[asyncio.Task] = set()
        self._sending = False

    async def admit(self, checks: list[Check], request_id: str, lease: float) -> Verdict:
        """Admit through the script; calls that arrive while a round trip is in flight share the next."""
        keys: list[str] = []
        args: list[str | int | float] = [request_id, lease]
        for check in checks:
            keys.append(PREFIX + check.counter)
            args += [check.kind, check.limit, check.amount, check.period_end]
        future = asyncio.get_running_loop().create_future()
        self._admits.append((keys, args, future))
        if not self._sending:
            self._sending = True
            await self._drain()
        out = await future
        refused = int(out[0])
        used = [int(v) for v in out[3::2]]
        resets = [float(v) for v in out[4::2]]
        return Verdict(refused == 0, used, resets, refused - 1, float(out[1]), int(out[2]), self.name)

    async def _drain(self) -> None:
        """Send what is queued; admissions that arrive meanwhile go together in the next pipeline.

        An admission with nothing in flight goes out at once in its own coroutine (no extra loop
        turn); under load, the round trip in flight gathers the next batch (group commit).
        """
        try:
            batch, self._admits = self._admits, []
            await self._run_batch(batch)
        finally:
            if self._admits:
                task = asyncio.ensure_future(self._drain())
                self._batches.add(task)
                task.add_done_callback(self._batches.discard)
            else:
                self._sending = False

    async def _run_batch(self, batch: list[tuple[list[str], list[str | int | float], asyncio.Future]]) -> None:
        """One round trip for the batch; the first call also carries the queued settlements."""
        settle_keys, settle_args = self._take_settlements()
        calls = [(settle_keys + keys, settle_args + args) if i == 0 else (keys, [0, *args])
                 for i, (keys, args, _) in enumerate(batch)]
        try:
            if len(calls) == 1:
                results: list = [await self._call(*calls[0])]
            else:
                async with self.client.pipeline(transaction=False) as pipe:
                    for keys, args in calls:
                        pipe.evalsha(self._script.sha, len(keys), *keys, *args)
                    results = await pipe.execute(raise_on_error=False)
                for i, result in enumerate(results):
                    if isinstance(result, NoScriptError):
                        results[i] = await self._call(*calls[i])
        except RedisError as exc:
            results = [exc] * len(batch)
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    def settle(self, ticket: Ticket, tokens: int, cost_micros: int) -> None:
        """Queue the settlement: it rides on the next admission, or goes alone after SETTLE_DELAY."""
        for check in ticket.checks:
            actual = cost_micros if check.kind.startswith("cost") else tokens
            self._queue.append((PREFIX + check.counter,
                                [check.kind, actual - check.amount, ticket.request_id, ticket.verdict.second]))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                SETTLE_DELAY, lambda: asyncio.ensure_future(self._send()))

    def _take_settlements(self) -> tuple[list[str], list[str | int | float]]:
        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        if not self._queue and self._timer is not None:
            self._timer.cancel()
            self._timer = None
        args: list[str | int | float] = [len(batch)]
        for _, op in batch:
            args += op
        return [key for key, _ in batch], args

    async def _send(self) -> None:
        """Settlements no admission came to carry."""
        self._timer = None
        while self._queue:
            keys, args = self._take_settlements()
            try:
                await self._call(keys, [*args, "", 0])
            except RedisError as exc:
                log.warning("could not settle %d reservations in Redis (%s); reconciliation corrects budgets",
                            args[0], type(exc).__name__)

    async def _call(self, keys: list[str], args: list[str | int | float]) -> list:
        """EVALSHA straight on the client (the Script wrapper's per-call work shows in profiles)."""
        try:
            return await self.client.evalsha(self._script.sha, len(keys), *keys, *args)
        except NoScriptError:
            self._script.sha = await self.client.script_load(ADMIT)
            return await self.client.evalsha(self._script.sha, len(keys), *keys, *args)

    async def renew(self, slots: list[tuple[str, str]], lease: float) -> int:
        """Extend the lease of these (counter, request id) slots that are still held, on Redis's clock."""
        renewed = 0
        for start in range(0, len(slots), MAX_BATCH):
            part = slots[start:start + MAX_BATCH]
            renewed += await self._renew(keys=[PREFIX + counter for counter, _ in part],
                                         args=[lease, *(rid for _, rid in part)])
        return renewed

    async def seed(self, totals: dict[str, tuple[int, float]]) -> None:
        """Raise budget counters to the store's figures: (value, expire-at) per counter."""
        items = list(totals.items())
        for start in range(0, len(items), 500):
            part = items[start:start + 500]
            args: list[int | float] = []
            for _, (value, until) in part:
                args += [value, int(until)]
            await self._seed(keys=[PREFIX + name for name, _ in part], args=args)
