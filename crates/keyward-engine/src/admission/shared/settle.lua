-- Deducts credits a node spent on its local budget while Redis was unreachable, exactly once:
-- the settlement's token is remembered for a day, so a retry after a lost reply is a no-op.
-- KEYS[1] quota hash, KEYS[2] dirty set, KEYS[3] the token's key;
-- ARGV: credits, the period they were spent in, current period, refill amount, key id, TTL.
-- Returns 'done' (this token was settled before), 'init' (load the balance first) or 'ok'.
if redis.call('EXISTS', KEYS[3]) == 1 then return 'done' end
if redis.call('EXISTS', KEYS[1]) == 0 then return 'init' end
local rem, per, pend = balance(KEYS[1], tonumber(ARGV[3]), tonumber(ARGV[4]))
local amount = tonumber(ARGV[1])
-- Credits of a period that has since been refilled are gone anyway.
if tonumber(ARGV[2]) >= per then
  rem = math.max(0, rem - amount)
  pend = pend + amount
  redis.call('SADD', KEYS[2], ARGV[5])
end
redis.call('HSET', KEYS[1], 'r', fmt(rem), 'p', fmt(per), 'w', fmt(pend))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
redis.call('SET', KEYS[3], '1', 'EX', 86400)
return 'ok'
