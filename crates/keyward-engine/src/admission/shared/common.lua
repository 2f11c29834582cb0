-- Shared by the scripts that read limit pools or quota balances: Rust prepends this file to
-- each of them (see `Scripts` in shared.rs), so the rules below are stated once.

-- A count as an integer string (Lua numbers are doubles).
local function fmt(x) return string.format('%.0f', x) end

-- A limit pool's TAT (microseconds) as the limit now configured sees it, or nil for a pool
-- that does not exist. A changed limit: the units already used carry over at the new rate.
local function pool_tat(key, interval, now)
  local st = redis.call('HMGET', key, 't', 'i')
  local tat = tonumber(st[1])
  local iv = tonumber(st[2])
  if tat and iv and iv > 0 and iv ~= interval and tat > now then
    tat = now + (tat - now) * interval / iv
  end
  return tat
end

-- A quota hash's balance in refill period `period` (-1 without refill): remaining, the period
-- it belongs to, credits not yet written behind, and whether a scheduled refill passed (then
-- the old period's credits, and their write-behind, are gone and `refill` is what remains).
local function balance(key, period, refill)
  local st = redis.call('HMGET', key, 'r', 'p', 'w')
  local rem = tonumber(st[1]) or 0
  local per = tonumber(st[2]) or -1
  local pend = tonumber(st[3]) or 0
  if period >= 0 and per < period then
    return refill, period, 0, true
  end
  return rem, per, pend, false
end

