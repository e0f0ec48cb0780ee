-- Forgets a device's registration so its id can register anew (its
-- deny-listed tokens stay refused until they expire).
--
-- KEYS[1]  the device's hash      KEYS[2]  set of every device id
-- ARGV[1]  device id
-- Returns 1 when it was registered, 0 otherwise.
local n = redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return n
