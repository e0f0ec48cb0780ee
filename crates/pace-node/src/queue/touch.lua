-- Heartbeat of a batch of waiting devices. A heartbeat only moves forward,
-- so a node whose clock lags cannot make a device look older.
--
-- KEYS[1] seen zset
-- ARGV[1] now (ms)        ARGV[2..] device ids
-- Returns the devices that are not waiting.
local now = tonumber(ARGV[1])
local missing = {}
for i = 2, #ARGV do
  local seen = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if not seen then
    missing[#missing + 1] = ARGV[i]
  elseif tonumber(seen) < now then
    redis.call('ZADD', KEYS[1], now, ARGV[i])
  end
end
return missing
