-- Joins a device to a room's queue, or returns what it already has: its
-- live session, or its place (same ticket). Also a heartbeat. The only
-- script that creates a place.
--
-- KEYS[1] config hash     KEYS[2] counters hash   KEYS[3] queue zset
-- KEYS[4] seen zset       KEYS[5] active zset     KEYS[6] sessions hash
-- KEYS[7] devices hash     KEYS[8] joined hash (device -> join time, ms)
-- KEYS[9] audit log stream  KEYS[10] events hash (what each event has done)
-- KEYS[11] rate zset      KEYS[12] the proof-of-work mark (room's tag)
-- ARGV[1] device id       ARGV[2] now (ms)
-- ARGV[3] the device's hash in the audit log (computed by the node)
-- ARGV[4] absent: a plain join (the reply below); else a node's whole join
--         in one round trip (`join_room`): the start of the rate window
--         (ms), and the reply is {reply below, config HGETALL, events
--         HGETALL (only with a shuffled event, else empty), admissions
--         after ARGV[4], 1 if it claimed the proof-of-work mark else 0}
-- ARGV[5] proof of work: absent/'exempt' (none asked), 'unsolved',
--         'invalid' or 'solved' (ARGV[6]: the mark's TTL, ms). Asked only
--         of a device with neither place nor live session, when the
--         room's pow_difficulty is above 0: then {'pow', 'challenge' |
--         'invalid' | 'reused'} and no place; 'solved' claims KEYS[12]
--         (SET NX PX), so a challenge works once.
-- Returns {'waiting', ticket, position, waiting_total}
--       | {'admitted', session id, ticket, admitted_at, expires_at}
--       | {'closed'} | {'rejected'} (mode reject) | {'nosuchroom'}
--       | {'eventnotopen', prequeue_start} (before the next event's pre-queue)
--
-- Events (the config's `events`, JSON) are judged by this server's clock
-- (TIME), never the node's: the first event not yet ended governs; before
-- its prequeue_start new joins are refused; the pre-queue's first join
-- records the first pre-queue ticket (and, for a shuffled event, logs its
-- commitment first); the first join after event_start records the last.
local device = ARGV[1]
local now = tonumber(ARGV[2])

-- Whether this call claimed the proof-of-work mark (a new place with it).
local claimed = 0

local function join()
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return {'nosuchroom'}
end

local sid = redis.call('HGET', KEYS[7], device)
if sid then
  local exp = redis.call('ZSCORE', KEYS[5], sid)
  local session = redis.call('HGET', KEYS[6], sid)
  if exp and session and tonumber(exp) > now then
    local ticket, at = string.match(session, '^.+|(%d+)|(%d+)$')
    return {'admitted', sid, tonumber(ticket), tonumber(at), tonumber(exp)}
  end
  -- Expired but not yet freed by admit: free it; the device queues anew.
  -- (Every log entry is appended before the change it records: an append
  -- that fails stops the script before the change.)
  if session then
    local ticket = string.match(session, '^.+|(%d+)|%d+$')
    local seq = tonumber(redis.call('HGET', KEYS[2], 'log_seq') or '0') + 1
    redis.call('XADD', KEYS[9], string.format('%d-0', seq), 'e',
      'e|' .. ARGV[2] .. '|' .. ticket .. '|' .. sid .. '|expired')
    redis.call('HSET', KEYS[2], 'log_seq', seq)
  end
  redis.call('ZREM', KEYS[5], sid)
  redis.call('HDEL', KEYS[6], sid)
  redis.call('HDEL', KEYS[7], device)
end

local ticket = redis.call('ZSCORE', KEYS[3], device)
if ticket then
  redis.call('ZADD', KEYS[4], 'GT', now, device)
  local rank = redis.call('ZRANK', KEYS[3], device)
  return {'waiting', tonumber(ticket), rank + 1, redis.call('ZCARD', KEYS[3])}
end

local pow = ARGV[5]
if pow and pow ~= '' and pow ~= 'exempt'
    and tonumber(redis.call('HGET', KEYS[1], 'pow_difficulty') or '0') > 0 then
  if pow == 'unsolved' then
    return {'pow', 'challenge'}
  elseif pow ~= 'solved' then
    return {'pow', 'invalid'}
  elseif not redis.call('SET', KEYS[12], '1', 'NX', 'PX', ARGV[6]) then
    return {'pow', 'reused'}
  end
  claimed = 1
end

if state == 'closed' then
  return {'closed'}
end

-- The governing event and where the room stands with it, by TIME.
local phase, event = 'none', nil
local events = redis.call('HGET', KEYS[1], 'events')
if events and events ~= '' then
  local t = redis.call('TIME')
  local clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  for _, e in ipairs(cjson.decode(events)) do
    if e.event_end > clock and (event == nil or e.prequeue_start < event.prequeue_start) then
      event = e
    end
  end
  if event then
    if clock < event.prequeue_start then
      return {'eventnotopen', event.prequeue_start}
    elseif clock < event.event_start then
      phase = 'prequeue'
    else
      phase = 'live'
    end
  end
end
if phase == 'none' and redis.call('HGET', KEYS[1], 'mode') == 'reject' then
  return {'rejected'}
end

local function log(entry)
  local seq = tonumber(redis.call('HGET', KEYS[2], 'log_seq') or '0') + 1
  redis.call('XADD', KEYS[9], string.format('%d-0', seq), 'e', entry)
  redis.call('HSET', KEYS[2], 'log_seq', seq)
end

ticket = redis.call('HINCRBY', KEYS[2], 'ticket', 1)
if phase == 'prequeue' then
  if redis.call('HSETNX', KEYS[10], event.id .. ':first', ticket) == 1
      and event.order == 'shuffle' and event.seed_sha256 then
    log('c|' .. ARGV[2] .. '|' .. event.id .. '|' .. event.seed_sha256)
  end
elseif phase == 'live' then
  redis.call('HSETNX', KEYS[10], event.id .. ':last', ticket - 1)
end
log(string.format('j|%s|%d|%s', ARGV[2], ticket, ARGV[3]))
redis.call('ZADD', KEYS[3], ticket, device)
redis.call('ZADD', KEYS[4], now, device)
redis.call('HSET', KEYS[8], device, ARGV[2])
local total = redis.call('ZCARD', KEYS[3])
local peak = tonumber(redis.call('HGET', KEYS[2], 'peak_waiting') or '0')
if total > peak then
  redis.call('HSET', KEYS[2], 'peak_waiting', total)
end
return {'waiting', ticket, total, total}
end

local out = join()
if not ARGV[4] or ARGV[4] == '' then
  return out
end
local events = {}
local declared = redis.call('HGET', KEYS[1], 'events')
if declared and string.find(declared, 'shuffle', 1, true) then
  events = redis.call('HGETALL', KEYS[10])
end
return {out, redis.call('HGETALL', KEYS[1]), events,
  redis.call('ZCOUNT', KEYS[11], '(' .. ARGV[4], '+inf'), claimed}
