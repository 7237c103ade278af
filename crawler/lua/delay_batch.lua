-- delay_batch.lua: URLs a host will not take for a long while wait in Redis, not in a worker.
--
-- A worker whose limiter defers a host far ahead (a long Retry-After, a big Crawl-delay with a
-- long queue) hands that host's URLs back as a new batch that only becomes runnable at its due
-- time; promote_delayed.lua sends it then. Its batch keeps running the other hosts' URLs and
-- can finish. Nothing is lost if the worker dies: the batch is stored before it is removed
-- from the worker's memory (and the source batch, if it is run again, has them too: fetching
-- is at least once, records exactly once).
--
-- KEYS[1] batch    list {prefix}:job:{id}:batch:<n> (new)
-- KEYS[2] depths   hash batch -> link depth
-- KEYS[3] delayed  sorted set batch -> due time (ms, Redis clock)
-- ARGV[1] batch number; ARGV[2] depth; ARGV[3] delay (ms); ARGV[4..] the URLs
-- Returns the due time (ms).
-- Clock   Redis TIME.
local t = redis.call('TIME')
local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3])
redis.call('DEL', KEYS[1])
for i = 4, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], string.format('%d', due), ARGV[1])
return due
