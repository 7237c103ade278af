-- job_batch_end.lua: a worker hands back batch n, fully or partly fetched.
--
-- With no leftover URLs the batch is deleted. Leftover URLs (the run was stopped by pause,
-- cancel or the batch time limit) replace the batch's list and are parked (paused), counted
-- as cancelled (cancelled), or handed back for another task (anything else). Then the job is
-- marked finished when nothing is pending, in the same atomic step.
--
-- KEYS[1] meta; KEYS[2] parked; KEYS[3] batch; KEYS[4] counters
-- ARGV[1] batch number; ARGV[2..] leftover URLs
-- Returns 'done', 'parked', 'cancelled' or 'requeue'.
-- Clock   Redis TIME, for the finished time.
local leftover = #ARGV - 1
redis.call('DEL', KEYS[3])
local verdict = 'done'
if leftover > 0 then
  local state = redis.call('HGET', KEYS[1], 'state')
  if state == 'cancelled' then
    redis.call('HINCRBY', KEYS[4], 'cancelled', leftover)
    verdict = 'cancelled'
  else
    for i = 2, #ARGV, 1000 do
      redis.call('RPUSH', KEYS[3], unpack(ARGV, i, math.min(i + 999, #ARGV)))
    end
    if state == 'paused' then
      redis.call('SADD', KEYS[2], ARGV[1])
      verdict = 'parked'
    else
      verdict = 'requeue'
    end
  end
end
-- Finished exactly when submit is complete and every accepted URL has a record or was cancelled.
local m = redis.call('HMGET', KEYS[1], 'state', 'submitted')
if m[2] == '1' and (m[1] == 'queued' or m[1] == 'running' or m[1] == 'paused') then
  local c = redis.call('HMGET', KEYS[4], 'total', 'done', 'cancelled')
  if (tonumber(c[2]) or 0) + (tonumber(c[3]) or 0) >= (tonumber(c[1]) or 0) then
    local t = redis.call('TIME')
    redis.call('HSET', KEYS[1], 'state', 'finished', 'finished',
      string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)))
  end
end
return verdict
