-- An operator's credit adjustment, applied to the live balance.
-- KEYS[1] quota hash; ARGV: op (set, increase, decrease), amount, current period, refill
-- amount, TTL seconds. Returns {'init'} if the balance is not loaded, else {'ok', before, after}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'init'} end
local rem, per, pend = balance(KEYS[1], tonumber(ARGV[3]), tonumber(ARGV[4]))
local before = rem
local amount = tonumber(ARGV[2])
if ARGV[1] == 'set' then
  -- The store is set to the same value, so nothing spent before is still owed to it.
  rem = amount; pend = 0
elseif ARGV[1] == 'increase' then
  rem = rem + amount
else
  rem = math.max(0, rem - amount)
end
redis.call('HSET', KEYS[1], 'r', fmt(rem), 'p', fmt(per), 'w', fmt(pend))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
return {'ok', fmt(before), fmt(rem)}
