-- Publishes one notification: numbers it in its scope and on the bus,
-- keeps it in the scope's history and in the bus log, and publishes it, in
-- one atomic step. Per scope, publish order is sequence order on every
-- node; a node that sees the bus sequence jump knows it missed messages and
-- reads them back from the bus log.
--
-- A sequence lives in a hash {epoch, seq}. Its epoch is the Redis time (µs)
-- when the hash was created: if Redis loses the hash (restart without
-- persistence, expiry of an idle scope), numbering restarts at 1 in a new
-- epoch, so a device holding an old cursor is told instead of being
-- replayed the wrong messages.
--
-- KEYS[1]  scope sequence hash      KEYS[2]  scope history stream
-- KEYS[3]  bus sequence hash        KEYS[4]  bus log stream
-- ARGV[1]  bus channel
-- ARGV[2]  envelope JSON; the fields bus_epoch, bus_seq, epoch and seq hold
--          the placeholder ARGV[3], replaced here
-- ARGV[3]  placeholder number text
-- ARGV[4]  history length per scope     ARGV[5]  history age, ms
-- ARGV[6]  bus log length               ARGV[7]  scope sequence idle ttl, ms
-- Returns {epoch, seq, bus epoch, bus seq} as strings.
local t = redis.call('TIME')
local now_us = t[1] .. string.format('%06d', tonumber(t[2]))
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = now_ms - tonumber(ARGV[5])

local function advance(hash, stream)
  local seq = redis.call('HINCRBY', hash, 'seq', 1)
  local epoch = redis.call('HGET', hash, 'epoch')
  if not epoch or seq == 1 then
    epoch = now_us
    redis.call('HSET', hash, 'epoch', epoch)
    -- A new epoch starts a new history.
    redis.call('DEL', stream)
  end
  return epoch, seq
end

local function splice(msg, field, value)
  local marker = '"' .. field .. '":' .. ARGV[3]
  local i, j = string.find(msg, marker, 1, true)
  if not i then
    error('envelope has no placeholder for ' .. field)
  end
  return string.sub(msg, 1, i - 1) .. '"' .. field .. '":' .. value .. string.sub(msg, j + 1)
end

local function keep(stream, seq, msg, maxlen)
  redis.call('XADD', stream, 'MAXLEN', '=', maxlen, string.format('%d', seq) .. '-0', 'n', msg, 't', now_ms)
  -- Age bound: drop the oldest entries past the age (bounded work per call;
  -- the length bound and the key's expiry cover the rest).
  for _ = 1, 64 do
    local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
    if #first == 0 or tonumber(first[1][2][4]) >= cutoff then
      break
    end
    redis.call('XDEL', stream, first[1][1])
  end
  redis.call('PEXPIRE', stream, ARGV[5])
end

local epoch, seq = advance(KEYS[1], KEYS[2])
local bus_epoch, bus_seq = advance(KEYS[3], KEYS[4])
local msg = ARGV[2]
msg = splice(msg, 'bus_epoch', bus_epoch)
msg = splice(msg, 'bus_seq', string.format('%d', bus_seq))
msg = splice(msg, 'epoch', epoch)
msg = splice(msg, 'seq', string.format('%d', seq))
keep(KEYS[2], seq, msg, ARGV[4])
keep(KEYS[4], bus_seq, msg, ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('PUBLISH', ARGV[1], msg)
return {epoch, string.format('%d', seq), bus_epoch, string.format('%d', bus_seq)}
