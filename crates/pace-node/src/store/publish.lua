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
-- A store that lost its newest writes (a failover to a replica that had not
-- received them, an AOF `everysec` restart) answers with a sequence lower
-- than one a node has already seen. The caller passes the highest bus
-- position it has seen (ARGV[8], ARGV[9]); when the bus sequence of that
-- epoch is lower, the bus starts a new epoch, and the epoch floor (KEYS[5],
-- Redis time µs) is raised to now: every scope whose epoch began before the
-- floor may have lost writes too, so it starts a new epoch the next time it
-- is numbered (here) or read (history.lua). A new bus epoch for any reason
-- (first use, lost hash) raises the floor the same way.
--
-- KEYS[1]  scope sequence hash      KEYS[2]  scope history stream
-- KEYS[3]  bus sequence hash        KEYS[4]  bus log stream
-- ARGV[1]  bus channel
-- ARGV[2]  envelope JSON; the fields bus_epoch, bus_seq, epoch and seq hold
--          the placeholder ARGV[3], replaced here
-- ARGV[3]  placeholder number text
-- ARGV[4]  history length per scope     ARGV[5]  history age, ms
-- KEYS[5]  epoch floor
-- ARGV[6]  bus log length               ARGV[7]  scope sequence idle ttl, ms
-- ARGV[8]  highest bus epoch the caller has seen ('0': none)
-- ARGV[9]  highest bus seq the caller has seen in that epoch
-- ARGV[10] highest epoch of this scope the caller has seen ('0': none)
-- ARGV[11] highest seq of this scope the caller has seen in that epoch
--
-- The scope's own head is checked the same way: a scope sequence lower
-- than the caller has seen in the same epoch (a store that lost writes the
-- bus check did not reveal, e.g. when the caller's bus position was reset)
-- starts a new epoch for that scope and answers rewound too.
-- Returns {epoch, seq, bus epoch, bus seq, rewound ('1' when this call found
-- the bus sequence lower than the caller had seen)} as strings.
local t = redis.call('TIME')
local now_us = t[1] .. string.format('%06d', tonumber(t[2]))
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = now_ms - tonumber(ARGV[5])

-- A bus sequence lower than the caller has seen: the store lost writes.
local rewound = '0'
local bus_now = redis.call('HMGET', KEYS[3], 'epoch', 'seq')
if bus_now[1] and bus_now[1] == ARGV[8] and tonumber(bus_now[2] or '0') < tonumber(ARGV[9]) then
  redis.call('DEL', KEYS[3])
  rewound = '1'
end
-- The same for the scope's own sequence.
local scope_now = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
if scope_now[1] and scope_now[1] == ARGV[10] and tonumber(scope_now[2] or '0') < tonumber(ARGV[11]) then
  redis.call('DEL', KEYS[1])
  rewound = '1'
end
local floor = tonumber(redis.call('GET', KEYS[5]) or '0')
if not redis.call('HGET', KEYS[3], 'epoch') then
  -- The bus starts a new epoch: so does every scope numbered before now.
  floor = tonumber(now_us)
  redis.call('SET', KEYS[5], now_us)
end

local function advance(hash, stream)
  local seq = redis.call('HINCRBY', hash, 'seq', 1)
  local epoch = redis.call('HGET', hash, 'epoch')
  if epoch and seq > 1 and tonumber(epoch) < floor then
    -- Numbered before the store lost writes: start over.
    seq = 1
    redis.call('HSET', hash, 'seq', seq)
  end
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
return {epoch, string.format('%d', seq), bus_epoch, string.format('%d', bus_seq), rewound}
