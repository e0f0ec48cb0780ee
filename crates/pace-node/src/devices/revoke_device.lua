-- Kicks a device: a deny-list entry refuses every token issued at or
-- before the cutoff until it expires (with the last such token), and the
-- record's current token id is cleared so no old token can ever refresh;
-- the record keeps the cutoff too, so the handshake reads one hash.
--
-- KEYS[1]  the device's deny-list entry    KEYS[2]  the device's hash
-- ARGV[1]  cutoff (Unix seconds)           ARGV[2]  entry lifetime (ms)
-- Returns 1 when the device has a record, 0 otherwise.
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], 'token_id', '', 'revoked_before', ARGV[1])
  return 1
end
return 0
