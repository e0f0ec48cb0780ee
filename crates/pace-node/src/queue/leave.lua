-- Removes a waiting device's place and counts it as abandoned.
--
-- KEYS[1] counters hash   KEYS[2] queue zset      KEYS[3] seen zset
-- KEYS[4] joined hash
-- ARGV[1] device id
-- Returns 1 if the device was waiting, else 0.
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then
  return 0
end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'abandoned_total', 1)
return 1
