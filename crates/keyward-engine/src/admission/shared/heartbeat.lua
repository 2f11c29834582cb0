-- Registers this node as live and counts the live nodes.
-- KEYS[1] the nodes sorted set; ARGV: now (ms), node id, cutoff (ms: older entries are dead),
-- TTL of the set (ms). Returns the number of live nodes.
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
return redis.call('ZCARD', KEYS[1])
