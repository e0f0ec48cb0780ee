-- Extends a live session to now + the room's session TTL.
--
-- KEYS[1] config hash     KEYS[2] active zset
-- ARGV[1] session id      ARGV[2] now (ms)
-- Returns the new expiry (ms), or nil if the session is unknown or expired.
local now = tonumber(ARGV[2])
local exp = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not exp or tonumber(exp) <= now then
  return nil
end
local ttl = tonumber(redis.call('HGET', KEYS[1], 'session_ttl_secs') or '')
if not ttl then
  return nil
end
local new_exp = now + ttl * 1000
redis.call('ZADD', KEYS[2], 'XX', new_exp, ARGV[1])
return new_exp
