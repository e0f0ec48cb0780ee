-- Orders an event's pre-queue at its start, as the node computed it
-- (pace_protocol::audit::shuffle_order of the seed and the waiting
-- tickets), only if the pre-queue is still exactly what the node read:
-- the same number of devices between the first and last pre-queue
-- tickets, each with the ticket given. The device at place k of the order
-- gets the k-th smallest of those tickets; the shuffle is logged with the
-- seed (revealed) before the change.
--
-- KEYS[1] counters hash   KEYS[2] queue zset   KEYS[3] events hash
-- KEYS[4] audit log stream
-- ARGV[1] now (ms)        ARGV[2] event id
-- ARGV[3..] device, ticket (as joined), ... in the shuffled order
-- Returns 'ok' | 'done' (shuffled already) | 'stale' (read again)
local id = ARGV[2]
if redis.call('HEXISTS', KEYS[3], id .. ':shuffled') == 1 then
  return 'done'
end
local first = redis.call('HGET', KEYS[3], id .. ':first')
local last = redis.call('HGET', KEYS[3], id .. ':last')
local seed = redis.call('HGET', KEYS[3], id .. ':seed')
if not first or not last or not seed then
  return 'stale'
end
local n = (#ARGV - 2) / 2
if redis.call('ZCOUNT', KEYS[2], first, last) ~= n then
  return 'stale'
end
local order, tickets = {}, {}
for i = 1, n do
  local device, ticket = ARGV[1 + 2 * i], ARGV[2 + 2 * i]
  local score = redis.call('ZSCORE', KEYS[2], device)
  if not score or tonumber(score) ~= tonumber(ticket) then
    return 'stale'
  end
  order[i] = ticket
  tickets[i] = tonumber(ticket)
end
table.sort(tickets)
local seq = tonumber(redis.call('HGET', KEYS[1], 'log_seq') or '0') + 1
redis.call('XADD', KEYS[4], string.format('%d-0', seq), 'e',
  's|' .. ARGV[1] .. '|' .. id .. '|' .. seed .. '|' .. table.concat(order, ','))
redis.call('HSET', KEYS[1], 'log_seq', seq)
for i = 1, n do
  redis.call('ZADD', KEYS[2], tickets[i], ARGV[1 + 2 * i])
end
redis.call('HSET', KEYS[3], id .. ':shuffled', '1')
return 'ok'
