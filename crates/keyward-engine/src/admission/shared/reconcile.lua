-- Reconciles one node's local_first pools with the shared state: one call per node per
-- reconcile interval (batched), never on the verify path.
--
-- KEYS[1..n]  the limit pools (hashes as in admit.lua: t = TAT in microseconds, i = emission
--             interval)
-- ARGV[1] now (microseconds since the epoch, from the calling node's clock)
-- ARGV[2] pool TTL margin (milliseconds)
-- then per pool: emission interval (microseconds) and the units this node admitted locally
-- since its last reconcile.
--
-- Each pool's TAT advances by interval * units from max(TAT, now), with no admission check:
-- the node has already admitted those units, so an overshoot is recorded as debt, and every
-- node then refuses until the pool has refilled past it (exactly as an exact limit would after
-- admitting the same units). Returns each pool's TAT after ('' for a pool that does not exist
-- and got no units: its bucket is full).
local now = tonumber(ARGV[1])
local margin = tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[1 + 2 * i])
  local units = tonumber(ARGV[2 + 2 * i])
  local tat = pool_tat(KEYS[i], interval, now)
  if units > 0 then
    local base = tat or now
    if base < now then base = now end
    tat = base + interval * units
    redis.call('HSET', KEYS[i], 't', string.format('%.3f', tat), 'i', ARGV[1 + 2 * i])
    redis.call('PEXPIRE', KEYS[i], math.ceil((tat - now) / 1000) + margin)
  end
  if tat then out[i] = string.format('%.3f', tat) else out[i] = '' end
end
return out
