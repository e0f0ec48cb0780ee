-- Creates a device record, or replaces it when the caller presents the
-- stored token id (a refresh); one atomic step, so two registrations of
-- one id cannot both win.
--
-- KEYS[1]  the device's hash      KEYS[2]  set of every device id
-- ARGV[1]  device id
-- ARGV[2]  the presented current token id ('' when none)
-- ARGV[3]  record JSON            ARGV[4]  new token id
-- ARGV[5]  now (ms)              ARGV[6]  departments JSON (new devices only:
--                                 a refresh keeps the granted ones)
-- Returns 'created', 'refreshed' or 'taken'.
local current = redis.call('HGET', KEYS[1], 'token_id')
if current then
  if ARGV[2] == '' or ARGV[2] ~= current then
    return 'taken'
  end
  redis.call('HSET', KEYS[1], 'record', ARGV[3], 'token_id', ARGV[4], 'last_seen_ms', ARGV[5])
  return 'refreshed'
end
redis.call('HSET', KEYS[1], 'record', ARGV[3], 'token_id', ARGV[4],
  'first_registered_ms', ARGV[5], 'last_seen_ms', ARGV[5], 'departments', ARGV[6])
redis.call('SADD', KEYS[2], ARGV[1])
return 'created'
