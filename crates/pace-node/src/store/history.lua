-- Reads one sequence's kept messages after a position, with the sequence's
-- current position, in one consistent step. Used for a scope's history
-- (device resume) and for the bus log (a node repairing a gap).
--
-- KEYS[1]  sequence hash {epoch, seq}
-- KEYS[2]  stream of kept messages (id = seq-0; fields n = envelope, t = ms)
-- ARGV[1]  epoch of the position     ARGV[2]  seq of the position
-- ARGV[3]  most messages to return
-- Returns {epoch, head seq, envelope, envelope, ...}: the messages after the
-- position when it is of the current epoch, else from the oldest kept.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  return {'0', '0'}
end
local head = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local from = 0
if epoch == ARGV[1] then
  from = tonumber(ARGV[2])
end
local out = {epoch, string.format('%d', head)}
if from >= head then
  return out
end
local entries = redis.call('XRANGE', KEYS[2], string.format('%d', from + 1) .. '-0', '+', 'COUNT', ARGV[3])
for _, e in ipairs(entries) do
  out[#out + 1] = e[2][2]
end
return out
