-- sched_reap.lua: claims whose worker never started the batch (it died between taking a
-- message and the batch's lease) go back in line at their old place; the caller sends a
-- message for each, so a message exists for every batch in line.
--
-- KEYS[1] ready  KEYS[2] claimed  KEYS[3] scores  (see sched_pop.lua)
-- ARGV[1] most claims returned per call
-- Returns  the members put back
-- Clock    Redis TIME: a claim is due when its expiry is past.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', string.format('%d', now),
  'LIMIT', 0, tonumber(ARGV[1]))
for _, m in ipairs(due) do
  local score = redis.call('HGET', KEYS[3], m) or string.format('%d', now)
  redis.call('ZADD', KEYS[1], 'NX', score, m)
  redis.call('ZREM', KEYS[2], m)
  redis.call('HDEL', KEYS[3], m)
end
return due
