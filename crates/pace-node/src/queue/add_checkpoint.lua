-- Adds a signed checkpoint to a room's audit log if the latest one is
-- still the one the sealing node started from (compare and set), so nodes
-- sealing at once never fork the chain.
--
-- KEYS[1] config hash (the room must exist)   KEYS[2] checkpoints zset
-- ARGV[1] expected seq of the latest checkpoint (0: none yet)
-- ARGV[2] the new checkpoint's seq            ARGV[3] its JSON
-- Returns 1 if added, else 0.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
local at = 0
if #last == 2 then
  at = tonumber(last[2])
end
if at ~= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
