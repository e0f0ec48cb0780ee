-- Records a registered device's connection: address and time. Creates
-- nothing for an unregistered device.
--
-- KEYS[1]  the device's hash
-- ARGV[1]  address    ARGV[2]  now (ms)
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'last_ip', ARGV[1], 'last_seen_ms', ARGV[2])
  return 1
end
return 0
