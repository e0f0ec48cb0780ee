-- Where a device stands (read-only): a live session, a place, or nothing.
--
-- KEYS[1] queue zset      KEYS[2] active zset     KEYS[3] sessions hash
-- KEYS[4] devices hash
-- ARGV[1] device id       ARGV[2] now (ms)
-- Returns {'admitted', session id, ticket, admitted_at, expires_at}
--       | {'waiting', ticket, position, waiting_total} | {'unknown'}
local device = ARGV[1]
local sid = redis.call('HGET', KEYS[4], device)
if sid then
  local exp = redis.call('ZSCORE', KEYS[2], sid)
  local session = redis.call('HGET', KEYS[3], sid)
  if exp and session and tonumber(exp) > tonumber(ARGV[2]) then
    local ticket, at = string.match(session, '^.+|(%d+)|(%d+)$')
    return {'admitted', sid, tonumber(ticket), tonumber(at), tonumber(exp)}
  end
end
local ticket = redis.call('ZSCORE', KEYS[1], device)
if ticket then
  local rank = redis.call('ZRANK', KEYS[1], device)
  return {'waiting', tonumber(ticket), rank + 1, redis.call('ZCARD', KEYS[1])}
end
return {'unknown'}
