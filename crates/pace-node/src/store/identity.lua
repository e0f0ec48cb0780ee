-- The store's identity: a random id written once, so a node notices when
-- the Redis it talks to was wiped (restarted without persistence, flushed,
-- replaced): the id it knew is gone or another one. Noticing sets the
-- wipe mark (Redis time, ms), which stays until an admin acknowledges it
-- (`pace-node admin acknowledge-store-wipe`).
--
-- KEYS[1]  store id          KEYS[2]  wipe mark
-- ARGV[1]  a fresh id, stored when there is none
-- ARGV[2]  the id this node knew ('' at start-up)
-- Returns {store id, wipe mark ms or ''}.
local id = redis.call('GET', KEYS[1])
if not id then
  redis.call('SET', KEYS[1], ARGV[1])
  id = ARGV[1]
end
if ARGV[2] ~= '' and id ~= ARGV[2] then
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('SET', KEYS[2], string.format('%d', now_ms), 'NX')
end
return {id, redis.call('GET', KEYS[2]) or ''}
