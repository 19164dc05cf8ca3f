"""Counters shared by every replica: the same rules as `limits_local`, as Redis scripts.

Admission is one script call (one round trip): it reads every counter the call touches, and only
if all limits hold does it apply every reservation, so two replicas can never both take the last
slot. Time is Redis's own clock, so replicas with skewed clocks still share one window.
Settlements are queued and sent together, one pipeline per loop turn, off the request's path.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .limits import Check, Ticket, Verdict

log = logging.getLogger("llmgateway.limits")

PREFIX = "llmgw:lim:"

ADMIT = """
local t = redis.call('TIME')
local second = tonumber(t[1])
local now = second + tonumber(t[2]) / 1000000
local rid, lease = ARGV[1], tonumber(ARGV[2])
local n = #KEYS
local used, resets = {}, {}
local refused, retry = 0, 0
for i = 1, n do
  local b = 2 + (i - 1) * 4
  local kind, limit, amount, pend = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local cur, reset, wait = 0, 0, 0
  if kind == 'rpm' or kind == 'tpm' then
    local h = redis.call('HGETALL', KEYS[i])
    local live, newest = {}, nil
    for j = 1, #h, 2 do
      local s, v = tonumber(h[j]), tonumber(h[j + 1])
      if s <= second - 60 then
        redis.call('HDEL', KEYS[i], h[j])
      else
        cur = cur + v
        live[#live + 1] = {s, v}
        if newest == nil or s > newest then newest = s end
      end
    end
    if newest then reset = newest + 60 - now end
    table.sort(live, function(a, c) return a[1] < c[1] end)
    local need, freed = cur + amount - limit, 0
    wait = 60
    for _, sv in ipairs(live) do
      freed = freed + sv[2]
      if freed >= need then wait = sv[1] + 60 - now break end
    end
  elseif kind == 'conc' then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    cur = redis.call('ZCARD', KEYS[i])
    wait = 1
  else
    cur = tonumber(redis.call('GET', KEYS[i]) or '0')
    reset = pend - now
    wait = reset
  end
  used[i], resets[i] = cur, reset
  if refused == 0 and cur + amount > limit then refused, retry = i, wait end
end
if refused == 0 then
  for i = 1, n do
    local b = 2 + (i - 1) * 4
    local kind, amount, pend = ARGV[b + 1], tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
    if kind == 'rpm' or kind == 'tpm' then
      redis.call('HINCRBY', KEYS[i], second, amount)
      redis.call('EXPIRE', KEYS[i], 120)
      resets[i] = second + 60 - now
    elseif kind == 'conc' then
      redis.call('ZADD', KEYS[i], now + lease, rid)
      redis.call('EXPIRE', KEYS[i], math.ceil(lease) + 60)
    else
      redis.call('INCRBY', KEYS[i], amount)
      redis.call('EXPIREAT', KEYS[i], math.ceil(pend) + 3600)
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

SETTLE = """
local rid, second = ARGV[1], ARGV[2]
for i = 1, #KEYS do
  local kind, delta = ARGV[2 + (i - 1) * 2 + 1], tonumber(ARGV[2 + (i - 1) * 2 + 2])
  if kind == 'tpm' then
    if redis.call('HEXISTS', KEYS[i], second) == 1 then redis.call('HINCRBY', KEYS[i], second, delta) end
  elseif kind == 'conc' then
    redis.call('ZREM', KEYS[i], rid)
  elseif kind ~= 'rpm' and delta ~= 0 and redis.call('EXISTS', KEYS[i]) == 1 then
    if redis.call('INCRBY', KEYS[i], delta) < 0 then redis.call('SET', KEYS[i], 0, 'KEEPTTL') end
  end
end
return 1
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
        self._admit = client.register_script(ADMIT)
        self._settle = client.register_script(SETTLE)
        self._seed = client.register_script(SEED)
        self._queue: list[tuple[list[str], list[str | int]]] = []
        self._sending = False

    async def admit(self, checks: list[Check], request_id: str, lease: float) -> Verdict:
        args: list[str | int | float] = [request_id, lease]
        for check in checks:
            args += [check.kind, check.limit, check.amount, check.period_end]
        out = await self._admit(keys=[PREFIX + c.counter for c in checks], args=args)
        refused = int(out[0])
        used = [int(v) for v in out[3::2]]
        resets = [float(v) for v in out[4::2]]
        return Verdict(refused == 0, used, resets, refused - 1, float(out[1]), int(out[2]), self.name)

    def settle(self, ticket: Ticket, tokens: int, cost_micros: int) -> None:
        """Queue the settlement; the queue goes out as one pipeline on the next loop turn."""
        args: list[str | int] = [ticket.request_id, ticket.verdict.second]
        for check in ticket.checks:
            actual = cost_micros if check.kind.startswith("cost") else tokens
            args += [check.kind, actual - check.amount]
        self._queue.append(([PREFIX + c.counter for c in ticket.checks], args))
        if not self._sending:
            self._sending = True
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self._send()))

    async def _send(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for keys, args in batch:
                        await self._settle(keys=keys, args=args, client=pipe)
                    await pipe.execute()
            except RedisError as exc:
                log.warning("could not settle %d reservations in Redis (%s); reconciliation corrects budgets",
                            len(batch), type(exc).__name__)
        self._sending = False

    async def seed(self, totals: dict[str, tuple[int, float]]) -> None:
        """Raise budget counters to the store's figures: (value, expire-at) per counter."""
        items = list(totals.items())
        for start in range(0, len(items), 500):
            part = items[start:start + 500]
            args: list[int | float] = []
            for _, (value, until) in part:
                args += [value, int(until)]
            await self._seed(keys=[PREFIX + name for name, _ in part], args=args)
