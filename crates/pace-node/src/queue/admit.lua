-- Frees expired sessions, then admits while the room is not paused, below
-- capacity and within the per-minute budget: the head of the queue in
-- ticket order (modes fifo and reject), or devices drawn uniformly among
-- those waiting (mode random: draw i of a run picks index
-- tonumber(first 12 hex digits of SHA-1(nonce ":draw:" i)) mod waiting),
-- or the head regardless of capacity and budget (mode passthrough). Atomic: concurrent runs from several nodes never
-- admit past capacity. Handles at most ARGV[3] expiries and admissions per
-- run (the caller runs it again while `more` is 1).
--
-- KEYS[1] config hash     KEYS[2] counters hash   KEYS[3] queue zset
-- KEYS[4] seen zset       KEYS[5] active zset     KEYS[6] sessions hash
-- KEYS[7] devices hash    KEYS[8] rate zset
-- KEYS[9] joined hash (device -> join time)   KEYS[10] wait distribution hash
-- KEYS[11] audit log stream   KEYS[12] events hash (what each event has done)
-- ARGV[1] now (ms)        ARGV[2] nonce (a fresh UUID v4 per run)
-- ARGV[3] batch size      ARGV[4..] wait-time bucket bounds (s), ascending
-- Returns {active, waiting, expires_at, more, {expired devices...},
--          {device, session id, ticket, waited ms, ...}, shuffle}
--
-- Events (the config's `events`, JSON), by this server's clock (TIME):
-- during the governing event's pre-queue nobody is admitted; once it is
-- live the room admits in ticket order with the event's capacity and
-- per-minute overrides, after recording the pre-queue's last ticket; a
-- shuffled event whose pre-queue is not ordered yet admits nobody and
-- returns its id as `shuffle` (the node then runs shuffle.lua).
local now = tonumber(ARGV[1])
local batch = tonumber(ARGV[3])
local window_ms = 60000

-- A session id in UUID v4 form from SHA-1(nonce ":" ticket): scripts
-- cannot draw randomness, the nonce brings it.
local function session_id(ticket)
  local h = redis.sha1hex(ARGV[2] .. ':' .. ticket)
  local v = tonumber(string.sub(h, 17, 17), 16) % 4 + 1
  local variant = string.sub('89ab', v, v)
  return string.sub(h, 1, 8) .. '-' .. string.sub(h, 9, 12) .. '-4' .. string.sub(h, 14, 16)
    .. '-' .. variant .. string.sub(h, 18, 20) .. '-' .. string.sub(h, 21, 32)
end

-- Appends one entry to the audit log (same script as the change, and
-- before it: an append that fails stops the script before the change).
local function log(entry)
  local seq = tonumber(redis.call('HGET', KEYS[2], 'log_seq') or '0') + 1
  redis.call('XADD', KEYS[11], string.format('%d-0', seq), 'e', entry)
  redis.call('HSET', KEYS[2], 'log_seq', seq)
end

local expired = {}
local due = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', ARGV[1], 'LIMIT', 0, batch)
for _, sid in ipairs(due) do
  local session = redis.call('HGET', KEYS[6], sid)
  if session then
    local ticket = string.match(session, '^.+|(%d+)|%d+$')
    log('e|' .. ARGV[1] .. '|' .. ticket .. '|' .. sid .. '|expired')
  end
  redis.call('ZREM', KEYS[5], sid)
  redis.call('HDEL', KEYS[6], sid)
  if session then
    local device = string.match(session, '^(.+)|%d+|%d+$')
    if redis.call('HGET', KEYS[7], device) == sid then
      redis.call('HDEL', KEYS[7], device)
    end
    expired[#expired + 1] = device
  end
end

redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', string.format('%d', now - window_ms))

local cfg = redis.call('HMGET', KEYS[1], 'state', 'capacity', 'admit_per_minute', 'session_ttl_secs', 'mode', 'events')
-- Rooms stored before modes existed have no mode: fifo. The log records
-- any other mode after the capacity.
local mode = cfg[5] or 'fifo'
local capacity_n = tonumber(cfg[2]) or 0
local per_minute = tonumber(cfg[3])
local hold = false
local shuffle = ''
if cfg[6] and cfg[6] ~= '' then
  local t = redis.call('TIME')
  local clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local event = nil
  for _, e in ipairs(cjson.decode(cfg[6])) do
    if e.event_end > clock and (event == nil or e.prequeue_start < event.prequeue_start) then
      event = e
    end
  end
  if event and clock >= event.prequeue_start then
    if clock < event.event_start then
      hold = true
    else
      mode = 'fifo'
      if event.capacity then capacity_n = event.capacity end
      if event.admit_per_minute then per_minute = event.admit_per_minute end
      redis.call('HSETNX', KEYS[12], event.id .. ':last', redis.call('HGET', KEYS[2], 'ticket') or '0')
      if event.order == 'shuffle' and redis.call('HEXISTS', KEYS[12], event.id .. ':shuffled') == 0 then
        if redis.call('HEXISTS', KEYS[12], event.id .. ':first') == 1 then
          hold = true
          shuffle = event.id
        else
          -- Nobody pre-queued: nothing to shuffle.
          redis.call('HSET', KEYS[12], event.id .. ':shuffled', '1')
        end
      end
    end
  end
end
local mode_suffix = ''
if mode ~= 'fifo' then
  mode_suffix = '|' .. mode
end
local active = redis.call('ZCARD', KEYS[5])
local admitted = {}
local expires_at = 0
if (cfg[1] == 'open' or cfg[1] == 'closed') and not hold then
  local free = capacity_n - active
  if per_minute then
    free = math.min(free, per_minute - redis.call('ZCARD', KEYS[8]))
  end
  if mode == 'passthrough' then
    free = batch
  end
  free = math.min(free, batch)
  if free > 0 then
    expires_at = now + (tonumber(cfg[4]) or 0) * 1000
    local capacity = string.format('%d', capacity_n)
    local function admit_one(device, score)
      local ticket = string.format('%d', tonumber(score))
      local sid = session_id(ticket)
      log('a|' .. ARGV[1] .. '|' .. ticket .. '|' .. sid .. '|' .. capacity .. mode_suffix)
      redis.call('ZREM', KEYS[3], device)
      redis.call('ZREM', KEYS[4], device)
      redis.call('ZADD', KEYS[5], expires_at, sid)
      redis.call('HSET', KEYS[6], sid, device .. '|' .. ticket .. '|' .. ARGV[1])
      redis.call('HSET', KEYS[7], device, sid)
      redis.call('ZADD', KEYS[8], now, sid)
      -- Wait time (join to admission) into the room's distribution.
      local joined = tonumber(redis.call('HGET', KEYS[9], device) or ARGV[1])
      redis.call('HDEL', KEYS[9], device)
      local waited = math.max(now - joined, 0)
      local bucket = '+Inf'
      for b = 4, #ARGV do
        if waited <= tonumber(ARGV[b]) * 1000 then
          bucket = ARGV[b]
          break
        end
      end
      redis.call('HINCRBY', KEYS[10], bucket, 1)
      redis.call('HINCRBY', KEYS[10], 'sum_ms', waited)
      admitted[#admitted + 1] = device
      admitted[#admitted + 1] = sid
      admitted[#admitted + 1] = tonumber(ticket)
      admitted[#admitted + 1] = waited
    end
    if mode == 'random' then
      -- Draw i picks, among those waiting now, the one at rank
      -- (first 12 hex digits of SHA-1(nonce ":draw:" i)) mod waiting.
      for i = 1, free do
        local waiting = redis.call('ZCARD', KEYS[3])
        if waiting == 0 then
          break
        end
        local h = redis.sha1hex(ARGV[2] .. ':draw:' .. i)
        local rank = tonumber(string.sub(h, 1, 12), 16) % waiting
        local got = redis.call('ZRANGE', KEYS[3], rank, rank, 'WITHSCORES')
        admit_one(got[1], got[2])
      end
    else
      local head = redis.call('ZRANGE', KEYS[3], 0, free - 1, 'WITHSCORES')
      for i = 1, #head, 2 do
        admit_one(head[i], head[i + 1])
      end
    end
    local n = #admitted / 4
    if n > 0 then
      redis.call('HINCRBY', KEYS[2], 'admitted_total', n)
      active = active + n
    end
  end
end

local more = 0
if #due == batch or #admitted / 4 == batch then
  more = 1
end
return {active, redis.call('ZCARD', KEYS[3]), expires_at, more, expired, admitted, shuffle}
