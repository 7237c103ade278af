-- sched_add.lua: put batches in the shared line of work (crawler/schedule.py), at a position
-- set by their priority: score = now (ms) - priority * aging (ms per priority point). Lower
-- scores are taken first, so a batch of priority p is taken before a batch of priority p - 1
-- that waited less than `aging` longer, and no batch waits more than (p_max - p) * aging
-- beyond its turn in arrival order: higher first, never starved.
--
-- NX: a batch already in line keeps its place (a reaper's or a hand-back's second add).
--
-- KEYS[1] ready   {prefix}:{sched}:ready  sorted set "<job id>/<batch n>" -> score (ms)
-- ARGV[1] aging: ms per priority point
-- ARGV[2..] pairs: member, priority (an integer)
-- Returns  the number of batches added
-- Clock    Redis TIME: every producer and worker ranks on the same clock.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local aging = tonumber(ARGV[1])
local added = 0
for i = 2, #ARGV, 2 do
  local score = now - tonumber(ARGV[i + 1]) * aging
  added = added + redis.call('ZADD', KEYS[1], 'NX', string.format('%d', score), ARGV[i])
end
return added
