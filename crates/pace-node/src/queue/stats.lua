-- A room's counters (read-only).
--
-- KEYS[1] counters hash   KEYS[2] queue zset      KEYS[3] active zset
-- KEYS[4] rate zset
-- ARGV[1] start of the last minute (ms): admissions after it count
-- Returns {waiting, active, admitted_total, abandoned_total, peak_waiting,
--          admitted_last_minute}
local c = redis.call('HMGET', KEYS[1], 'admitted_total', 'abandoned_total', 'peak_waiting')
return {
  redis.call('ZCARD', KEYS[2]),
  redis.call('ZCARD', KEYS[3]),
  tonumber(c[1] or '0'),
  tonumber(c[2] or '0'),
  tonumber(c[3] or '0'),
  redis.call('ZCOUNT', KEYS[4], '(' .. ARGV[1], '+inf'),
}
