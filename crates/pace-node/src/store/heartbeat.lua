-- Records one node's presence and ages out nodes that stopped
-- heart-beating. Times are Redis server time, so node clocks do not matter.
--
-- KEYS[1]  sorted set: node id -> last heartbeat (ms)
-- KEYS[2]  hash: node id -> node info JSON
-- ARGV[1]  node id
-- ARGV[2]  node info JSON
-- ARGV[3]  time-to-live in ms
-- Returns the number of nodes aged out.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[3])))
for _, id in ipairs(dead) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
return #dead
