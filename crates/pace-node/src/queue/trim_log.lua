-- Drops a room's audit-log entries up to a sequence number and the
-- checkpoints before it; the checkpoint at it stays as the anchor.
--
-- KEYS[1] audit log stream   KEYS[2] checkpoints zset
-- ARGV[1] the last seq to drop
redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-0', tonumber(ARGV[1]) + 1))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
return 1
