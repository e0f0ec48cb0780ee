-- Lists live nodes: ages out the dead ones first, then returns
-- {id, last heartbeat ms, info JSON, ...} ordered by node id.
--
-- KEYS[1]  sorted set: node id -> last heartbeat (ms)
-- KEYS[2]  hash: node id -> node info JSON
-- ARGV[1]  time-to-live in ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[1])))
for _, id in ipairs(dead) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
local live = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local out = {}
for i = 1, #live, 2 do
  local info = redis.call('HGET', KEYS[2], live[i])
  if info then
    out[#out + 1] = live[i]
    out[#out + 1] = live[i + 1]
    out[#out + 1] = info
  end
end
return out
