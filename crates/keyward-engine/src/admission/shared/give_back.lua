-- Puts credits taken by take_pending.lua back (the store write failed), if the balance is
-- still in the same refill period. KEYS[1] quota hash, KEYS[2] dirty set;
-- ARGV: credits, period, key id.
local per = redis.call('HGET', KEYS[1], 'p')
if not per or per ~= ARGV[2] then return 0 end
redis.call('HINCRBY', KEYS[1], 'w', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[3])
return 1
