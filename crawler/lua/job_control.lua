-- job_control.lua: pause, resume or cancel a job, atomically with the workers' batch scripts.
--
-- KEYS[1] meta; KEYS[2] parked; KEYS[3] counters; KEYS[4..] batch lists of parked batches
--         (cancel only: their URLs are counted as cancelled and the lists deleted)
-- ARGV[1] 'pause' | 'resume' | 'cancel'; ARGV[2..] the parked batch numbers of KEYS[4..]
-- Returns {state after, previous state, batch numbers to enqueue again (resume only)...}.
--         Resume leaves the batches in `parked`: a worker removes one when it starts running it,
--         so a crash between this script and the enqueue loses nothing (resume again).
-- Clock   Redis TIME, for the finished time of a cancelled job.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing', ''} end
local op = ARGV[1]
if state == 'finished' then return {state, state} end
if state == 'cancelled' and op ~= 'cancel' then return {state, state} end
if op == 'pause' then
  redis.call('HSET', KEYS[1], 'state', 'paused')
  return {'paused', state}
elseif op == 'resume' then
  if state ~= 'paused' then return {state, state} end
  local started = redis.call('HEXISTS', KEYS[1], 'started') == 1
  local new = started and 'running' or 'queued'
  redis.call('HSET', KEYS[1], 'state', new)
  local out = {new, state}
  for _, n in ipairs(redis.call('SMEMBERS', KEYS[2])) do out[#out + 1] = n end
  return out
elseif op == 'cancel' then
  if state ~= 'cancelled' then
    local t = redis.call('TIME')
    redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished',
      string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)))
  end
  -- Also on a cancelled job: a batch parked just before the cancel is cleaned up by a 2nd call.
  for i = 4, #KEYS do
    if redis.call('SREM', KEYS[2], ARGV[i - 2]) == 1 then
      redis.call('HINCRBY', KEYS[3], 'cancelled', redis.call('LLEN', KEYS[i]))
      redis.call('DEL', KEYS[i])
    end
  end
  return {'cancelled', state}
end
return redis.error_reply('unknown operation ' .. tostring(op))
