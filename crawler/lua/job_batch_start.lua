-- job_batch_start.lua: a worker asks whether it may run batch n of a job.
--
-- Atomic with pause/resume/cancel, so a batch is never parked after a resume took the parked
-- set (it would be stranded) and never run after a cancel was seen.
--
-- KEYS[1] meta      hash: state, started, ...
-- KEYS[2] parked    set of batch numbers held while the job is paused
-- KEYS[3] batch     list of the batch's URLs
-- KEYS[4] counters  hash (cancelled)
-- KEYS[5] workers   hash worker name -> last seen (ms)
-- ARGV[1] batch number; ARGV[2] worker name
-- Returns 'run', 'paused' (parked), 'cancelled' (URLs counted as cancelled), 'gone' (the batch
--         is already done: a redelivered task) or 'missing' (no such job).
-- Clock   Redis TIME, for started and last-seen times.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
local t = redis.call('TIME')
local now_ms = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('HSET', KEYS[5], ARGV[2], now_ms)
if redis.call('EXISTS', KEYS[3]) == 0 then return 'gone' end
if state == 'cancelled' then
  redis.call('HINCRBY', KEYS[4], 'cancelled', redis.call('LLEN', KEYS[3]))
  redis.call('DEL', KEYS[3])
  return 'cancelled'
end
if state == 'paused' then
  redis.call('SADD', KEYS[2], ARGV[1])
  return 'paused'
end
if state == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'running', 'started', now_ms)
end
redis.call('SREM', KEYS[2], ARGV[1])  -- resumed: no longer held
return 'run'
