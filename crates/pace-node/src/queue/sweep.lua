-- Removes waiting devices whose last heartbeat is older than the cutoff
-- (now - grace) and counts them as abandoned. At most ARGV[2] per run.
--
-- KEYS[1] counters hash   KEYS[2] queue zset      KEYS[3] seen zset
-- KEYS[4] joined hash
-- ARGV[1] cutoff (ms): heartbeats strictly before it are too old
-- ARGV[2] batch size
-- Returns the removed devices, oldest heartbeat first.
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, device in ipairs(gone) do
  redis.call('ZREM', KEYS[2], device)
  redis.call('ZREM', KEYS[3], device)
  redis.call('HDEL', KEYS[4], device)
end
if #gone > 0 then
  redis.call('HINCRBY', KEYS[1], 'abandoned_total', #gone)
end
return gone
