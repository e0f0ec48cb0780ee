-- What a handshake needs of a device, in its one registry round trip: the
-- token id (is it registered?), the groups its credential grants and a
-- kick's cutoff; the deny-list key only when there is no record (a
-- forgotten device's entry outlives its record). A registered device is
-- marked seen at the same time (address and time), as the handshake did
-- with a second script before.
--
-- KEYS[1]  the device's hash      KEYS[2]  the device's deny-list entry
-- ARGV[1]  address ('' = do not mark seen)   ARGV[2]  now (ms)
-- Returns {token_id or false, departments JSON or false, cutoff or false}.
local f = redis.call('HMGET', KEYS[1], 'token_id', 'departments', 'revoked_before')
if f[1] then
  if ARGV[1] ~= '' then
    redis.call('HSET', KEYS[1], 'last_ip', ARGV[1], 'last_seen_ms', ARGV[2])
  end
  return {f[1], f[2], f[3]}
end
return {false, false, redis.call('GET', KEYS[2])}
