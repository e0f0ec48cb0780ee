-- Gives a new room to a tenant, once: the owner of a room never changes,
-- and a room made without an owner (with the service key) keeps none.
--
-- KEYS[1]  the room's owner key      KEYS[2]  the room's config hash
-- ARGV[1]  the tenant claiming it
-- Returns the owner after the call, or '' when the room exists unowned.
local owner = redis.call('GET', KEYS[1])
if owner then
  return owner
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return ''
end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
