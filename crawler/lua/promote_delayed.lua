-- promote_delayed.lua: delayed batches whose time has come get a pending lease, to be sent.
--
-- The lease (owner '') covers a caller that dies before sending: a reaper sends it instead.
--
-- KEYS[1] delayed  sorted set batch -> due time (ms)
-- KEYS[2] leases   KEYS[3] owners
-- ARGV[1] pending lease length (ms); ARGV[2] at most this many batches
-- Returns the batch numbers to send.
-- Clock   Redis TIME.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now),
  'LIMIT', 0, tonumber(ARGV[2]))
local expiry = string.format('%d', now + tonumber(ARGV[1]))
for _, n in ipairs(due) do
  redis.call('ZREM', KEYS[1], n)
  redis.call('ZADD', KEYS[2], expiry, n)
  redis.call('HSET', KEYS[3], n, '')
end
return due
