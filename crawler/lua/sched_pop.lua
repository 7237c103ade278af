-- sched_pop.lua: take the first batch in line (lowest score) for the worker that holds a
-- task message. The batch is claimed, not dropped: if the worker dies before its batch start
-- (which takes the batch's lease) the claim runs out and sched_reap.lua puts it back.
--
-- KEYS[1] ready    {prefix}:{sched}:ready    sorted set member -> score
-- KEYS[2] claimed  {prefix}:{sched}:claimed  sorted set member -> claim expiry (ms)
-- KEYS[3] scores   {prefix}:{sched}:scores   hash member -> its score in `ready`
-- ARGV[1] claim length (ms)
-- Returns  the member "<job id>/<batch n>", or false when the line is empty
-- Clock    Redis TIME, for the claim's expiry.
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #first == 0 then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREM', KEYS[1], first[1])
redis.call('ZADD', KEYS[2], string.format('%d', now + tonumber(ARGV[1])), first[1])
redis.call('HSET', KEYS[3], first[1], first[2])
return first[1]
