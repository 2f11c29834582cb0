-- Takes a batch of credits spent but not yet written behind to the store.
-- KEYS[1] the dirty set; ARGV: quota hash name prefix, batch size.
-- Returns a flat list {key_id, credits, period, ...}; those credits are now the caller's to
-- write (or to give back with give_back.lua if the store write fails).
local ids = redis.call('SPOP', KEYS[1], tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local k = ARGV[1] .. id
  local st = redis.call('HMGET', k, 'w', 'p')
  local pend = tonumber(st[1]) or 0
  if pend > 0 then
    redis.call('HSET', k, 'w', '0')
    table.insert(out, id)
    table.insert(out, string.format('%.0f', pend))
    table.insert(out, st[2])
  end
end
return out
