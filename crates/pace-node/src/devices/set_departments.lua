-- Replaces the groups a registered device's credential grants; creates
-- nothing for an unregistered device.
--
-- KEYS[1]  the device's hash
-- ARGV[1]  departments JSON
-- Returns 1 when the device is registered, 0 otherwise.
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'departments', ARGV[1])
  return 1
end
return 0
