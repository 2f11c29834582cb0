-- Loads a key's balance from the store into Redis, unless some node already did.
-- KEYS[1] the quota hash; ARGV: remaining, refill period (unix seconds or -1), TTL seconds.
-- Returns 1 if this call initialised it, 0 if it existed.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'r', ARGV[1], 'p', ARGV[2], 'w', '0')
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
