-- Deletes an admin user, atomically.
-- KEYS[1] the tenant's user set, KEYS[2] user hash; ARGV[1] user name
-- Returns 1 if the user existed, 0 if not.
redis.call('SREM', KEYS[1], ARGV[1])
return redis.call('DEL', KEYS[2])
