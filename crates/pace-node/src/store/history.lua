-- Reads one sequence's kept messages after a position, with the sequence's
-- current position, in one consistent step. Used for a scope's history
-- (device resume) and for the bus log (a node repairing a gap).
--
-- A sequence numbered before the epoch floor (publish.lua: the store lost
-- writes since) is dropped here and reads as empty, so a device holding a
-- cursor of it is told its epoch changed. A position past the head of the
-- current epoch proves the store lost writes too: from a node (ARGV[4] =
-- '1', the bus reader, whose position is its own) the sequence is dropped
-- and the floor raised; from a device (ARGV[4] = '0', a cursor anyone can
-- send) the answer only says 'lost', so a forged cursor changes nothing.
--
-- KEYS[1]  sequence hash {epoch, seq}
-- KEYS[2]  stream of kept messages (id = seq-0; fields n = envelope, t = ms)
-- KEYS[3]  epoch floor
-- ARGV[1]  epoch of the position     ARGV[2]  seq of the position
-- ARGV[3]  most messages to return   ARGV[4]  '1' when the position is trusted
-- Returns {epoch, head seq, status, envelope, envelope, ...}: status 'ok' or
-- 'lost' (the position is past the head); the messages after the position
-- when it is of the current epoch, else from the oldest kept.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  return {'0', '0', 'ok'}
end
local floor = tonumber(redis.call('GET', KEYS[3]) or '0')
if tonumber(epoch) < floor then
  redis.call('DEL', KEYS[1], KEYS[2])
  return {'0', '0', 'ok'}
end
local head = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local from = 0
if epoch == ARGV[1] then
  from = tonumber(ARGV[2])
end
if from > head then
  if ARGV[4] == '1' then
    local t = redis.call('TIME')
    redis.call('SET', KEYS[3], t[1] .. string.format('%06d', tonumber(t[2])))
    redis.call('DEL', KEYS[1], KEYS[2])
    return {'0', '0', 'lost'}
  end
  return {epoch, string.format('%d', head), 'lost'}
end
local out = {epoch, string.format('%d', head), 'ok'}
if from >= head then
  return out
end
local entries = redis.call('XRANGE', KEYS[2], string.format('%d', from + 1) .. '-0', '+', 'COUNT', ARGV[3])
for _, e in ipairs(entries) do
  out[#out + 1] = e[2][2]
end
return out
