-- One admission decision: every rate limit of a key and its quota, all-or-nothing.
--
-- KEYS[1..n]  the limit pools (hashes: t = TAT in microseconds, i = emission interval)
-- KEYS[n+1]   the key's quota hash (r = remaining, p = refill period, w = not yet written
--             behind to the store)
-- KEYS[n+2]   the set of key ids with credits to write behind
-- ARGV[1] now (microseconds since the epoch, from the calling node's clock)
-- ARGV[2] cost
-- ARGV[3] n, then per limit: emission interval (microseconds) and burst
-- then: has_quota (0/1), current refill period (unix seconds, -1 without refill), refill
-- amount, key id, quota TTL (seconds), pool TTL margin (milliseconds)
--
-- Returns {status, credits, tat_1 .. tat_n}: status is 'admitted', 'limited', 'exhausted' or
-- 'init' (the quota is not loaded yet: nothing was read or written); credits is the balance
-- left ('' when the quota stage was not reached); tat_i is each pool's TAT before this request
-- ('' for a pool that does not exist), from which the caller computes the reports.
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local q = 4 + 2 * n
local has_quota = ARGV[q] == '1'
local qkey = KEYS[n + 1]
if has_quota and redis.call('EXISTS', qkey) == 0 then
  return {'init'}
end
local margin = tonumber(ARGV[q + 5])
local out = {'', ''}
local admitted = true
local news = {}
for i = 1, n do
  local interval = tonumber(ARGV[2 + 2 * i])
  local burst = tonumber(ARGV[3 + 2 * i])
  local tat = pool_tat(KEYS[i], interval, now)
  if tat then out[2 + i] = string.format('%.3f', tat) else out[2 + i] = '' end
  local base = tat or now
  if base < now then base = now end
  local new = base + interval * cost
  if cost > burst or now < new - interval * burst then admitted = false end
  news[i] = new
end
if not admitted then
  out[1] = 'limited'
  return out
end
if has_quota then
  local period = tonumber(ARGV[q + 1])
  local rem, per, pend, refilled = balance(qkey, period, tonumber(ARGV[q + 2]))
  if refilled then
    redis.call('HSET', qkey, 'r', fmt(rem), 'p', fmt(per), 'w', '0')
  elseif per ~= period then
    -- The refill rule changed (removed, or a schedule whose last refill is older): no refill,
    -- but the balance now belongs to the current period, so write-behind keeps matching it.
    per = period
    redis.call('HSET', qkey, 'p', fmt(per))
  end
  if rem < cost then
    out[1] = 'exhausted'
    out[2] = fmt(rem)
    return out
  end
  if cost > 0 then
    rem = rem - cost
    pend = pend + cost
    redis.call('HSET', qkey, 'r', fmt(rem), 'w', fmt(pend))
    redis.call('SADD', KEYS[n + 2], ARGV[q + 3])
  end
  redis.call('EXPIRE', qkey, tonumber(ARGV[q + 4]))
  out[2] = fmt(rem)
end
if cost > 0 then
  for i = 1, n do
    redis.call('HSET', KEYS[i], 't', string.format('%.3f', news[i]), 'i', ARGV[2 + 2 * i])
    -- An idle pool expires once its bucket is full again (plus a margin for clock skew).
    redis.call('PEXPIRE', KEYS[i], math.ceil((news[i] - now) / 1000) + margin)
  end
end
out[1] = 'admitted'
return out
