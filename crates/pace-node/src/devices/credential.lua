-- What a handshake needs of a device, in one round trip: its registration
-- (for the tenant), the groups its credential grants, and its deny-list
-- entry (tokens issued at or before that second are revoked).
--
-- KEYS[1]  the device's hash      KEYS[2]  the device's deny-list entry
-- Returns {record JSON or false, departments JSON or false, cutoff or false}.
local fields = redis.call('HMGET', KEYS[1], 'record', 'departments')
return {fields[1], fields[2], redis.call('GET', KEYS[2])}
