-- Ends a session and frees its slot.
--
-- KEYS[1] active zset     KEYS[2] sessions hash   KEYS[3] devices hash
-- KEYS[4] counters hash   KEYS[5] audit log stream
-- ARGV[1] session id      ARGV[2] now (ms)
-- Returns 1 if the session was held, else 0.
local sid = ARGV[1]
local session = redis.call('HGET', KEYS[2], sid)
if not session then
  return 0
end
-- The log entry first: an append that fails stops the script before the
-- change it records.
local ticket = string.match(session, '^.+|(%d+)|%d+$')
local seq = tonumber(redis.call('HGET', KEYS[4], 'log_seq') or '0') + 1
redis.call('XADD', KEYS[5], string.format('%d-0', seq), 'e',
  'e|' .. ARGV[2] .. '|' .. ticket .. '|' .. sid .. '|released')
redis.call('HSET', KEYS[4], 'log_seq', seq)
redis.call('ZREM', KEYS[1], sid)
redis.call('HDEL', KEYS[2], sid)
local device = string.match(session, '^(.+)|%d+|%d+$')
if redis.call('HGET', KEYS[3], device) == sid then
  redis.call('HDEL', KEYS[3], device)
end
return 1
