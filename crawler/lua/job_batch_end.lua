-- job_batch_end.lua: a worker hands back batch n, fully or partly fetched, and its lease.
--
-- Only the lease owner may hand a batch back: a worker whose lease was reaped (it looked dead:
-- no heartbeat for a whole lease) gets 'lost' and touches nothing, since the batch now belongs
-- to whoever took it over. With no leftover URLs the batch is deleted. Leftover URLs (the run
-- was stopped by pause, cancel, shutdown or the batch time limit) replace the batch's list and
-- are parked (paused), counted as cancelled (cancelled), or handed back for another task
-- (anything else; the lease is kept for one more lease length with owner '', so if the new
-- message never leaves this worker, a reaper sends it). Then the job is marked finished when
-- nothing is pending, in the same atomic step.
--
-- KEYS[1] meta; KEYS[2] parked; KEYS[3] batch; KEYS[4] counters; KEYS[5] leases; KEYS[6] owners
-- ARGV[1] batch number (-1: no batch, only the finish check); ARGV[2] owner token;
-- ARGV[3] lease length (ms); ARGV[4..] leftover URLs
-- Returns 'done', 'parked', 'cancelled', 'requeue' (send it again) or 'lost'.
-- Clock   Redis TIME, for the lease expiry and the finished time.
local n = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local verdict = 'done'
if n ~= '-1' then
  if redis.call('HGET', KEYS[6], n) ~= ARGV[2] then return 'lost' end
  local leftover = #ARGV - 3
  redis.call('DEL', KEYS[3])
  if leftover > 0 then
    local state = redis.call('HGET', KEYS[1], 'state')
    if state == 'cancelled' then
      redis.call('HINCRBY', KEYS[4], 'cancelled', leftover)
      verdict = 'cancelled'
    else
      for i = 4, #ARGV, 1000 do
        redis.call('RPUSH', KEYS[3], unpack(ARGV, i, math.min(i + 999, #ARGV)))
      end
      if state == 'paused' then
        redis.call('SADD', KEYS[2], n)
        verdict = 'parked'
      else
        verdict = 'requeue'
      end
    end
  end
  if verdict == 'requeue' then
    redis.call('ZADD', KEYS[5], string.format('%d', now + tonumber(ARGV[3])), n)
    redis.call('HSET', KEYS[6], n, '')
  else
    redis.call('ZREM', KEYS[5], n)
    redis.call('HDEL', KEYS[6], n)
  end
end
-- Finished exactly when submit is complete and every accepted URL has a record or was cancelled.
local m = redis.call('HMGET', KEYS[1], 'state', 'submitted')
if m[2] == '1' and (m[1] == 'queued' or m[1] == 'running' or m[1] == 'paused') then
  local c = redis.call('HMGET', KEYS[4], 'total', 'done', 'cancelled')
  if (tonumber(c[2]) or 0) + (tonumber(c[3]) or 0) >= (tonumber(c[1]) or 0) then
    redis.call('HSET', KEYS[1], 'state', 'finished', 'finished', string.format('%d', now))
  end
end
return verdict
