-- Counts one login attempt of an account in a fixed window.
-- KEYS[1] the account's counter ({prefix}:login-attempts:<tenant>/<user>)
-- ARGV[1] window, milliseconds: starts with the first attempt; later attempts
-- do not extend it.
-- Returns {attempts in the window, milliseconds until it ends}.
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if n == 1 or ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
