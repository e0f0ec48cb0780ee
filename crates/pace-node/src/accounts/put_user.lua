-- Creates an admin user or replaces its password hash, atomically.
-- KEYS[1] tenant hash, KEYS[2] the tenant's user set ({prefix}:admins:<tenant>),
-- KEYS[3] user hash ({prefix}:admin:<tenant>/<user>)
-- ARGV[1] mode: "create" (fails if the user exists) or "password" (fails if it does not)
-- ARGV[2] user name, ARGV[3] argon2id PHC hash, ARGV[4] created_at
-- Returns "ok", "no_tenant", "exists" (create) or "no_user" (password).
if redis.call('EXISTS', KEYS[1]) == 0 then return 'no_tenant' end
local exists = redis.call('EXISTS', KEYS[3]) == 1
if ARGV[1] == 'create' then
  if exists then return 'exists' end
  redis.call('HSET', KEYS[3], 'password_hash', ARGV[3], 'created_at', ARGV[4])
  redis.call('SADD', KEYS[2], ARGV[2])
else
  if not exists then return 'no_user' end
  redis.call('HSET', KEYS[3], 'password_hash', ARGV[3])
end
return 'ok'
