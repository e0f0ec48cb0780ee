-- Creates or updates a tenant, atomically.
-- KEYS[1] tenant hash ({prefix}:tenant:<id>), KEYS[2] tenant id set ({prefix}:tenants)
-- ARGV[1] mode: "create" (fails if it exists) or "update" (fails if it does not)
-- ARGV[2] tenant id, ARGV[3] name, ARGV[4] allowed origins (JSON array), ARGV[5] created_at
-- Returns "ok", "exists" (create) or "missing" (update).
local exists = redis.call('EXISTS', KEYS[1]) == 1
if ARGV[1] == 'create' then
  if exists then return 'exists' end
  redis.call('HSET', KEYS[1], 'name', ARGV[3], 'origins', ARGV[4], 'created_at', ARGV[5])
  redis.call('SADD', KEYS[2], ARGV[2])
else
  if not exists then return 'missing' end
  redis.call('HSET', KEYS[1], 'name', ARGV[3], 'origins', ARGV[4])
end
return 'ok'
