-- Increments a counter and publishes a message carrying the new value, in
-- one atomic step: messages that use the same counter are published in
-- counter order (per-scope notification sequence numbers, cluster-wide
-- connection generations).
--
-- KEYS[1]  the counter
-- ARGV[1]  the bus channel
-- ARGV[2]  message text before the value
-- ARGV[3]  message text after the value
-- Returns the new counter value.
local value = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2] .. string.format('%d', value) .. ARGV[3])
return value
