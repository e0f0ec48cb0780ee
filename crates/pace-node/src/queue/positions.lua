-- Positions of several devices at one instant (read-only).
--
-- KEYS[1] queue zset
-- ARGV[1..] device ids
-- Returns {waiting_total, position or nil, ...} in argument order.
local out = {redis.call('ZCARD', KEYS[1])}
for i = 1, #ARGV do
  local rank = redis.call('ZRANK', KEYS[1], ARGV[i])
  if rank then
    out[i + 1] = rank + 1
  else
    out[i + 1] = false
  end
end
return out
