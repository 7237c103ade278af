-- lease_renew.lua: a worker's heartbeat for the batches of one job it is running.
--
-- Extends each lease the worker still owns; a lease that changed owner was reaped (this worker
-- looked dead for a whole lease) and is reported lost, so the worker stops that run and leaves
-- the batch to its new owner. Also records the worker as seen, and counts the job's workers
-- seen recently: the local fallback limiter divides the job's rates by that number.
--
-- KEYS[1] leases   sorted set batch number -> lease expiry (ms)
-- KEYS[2] owners   hash batch number -> owner token
-- KEYS[3] workers  hash worker name -> last seen (ms)
-- ARGV[1] lease length (ms); ARGV[2] worker name; ARGV[3] "recently" (ms);
-- ARGV[4..] pairs of batch number, owner token
-- Returns {workers seen recently, lost batch numbers...}.
-- Clock   Redis TIME.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = string.format('%d', now + tonumber(ARGV[1]))
redis.call('HSET', KEYS[3], ARGV[2], string.format('%d', now))
local out = {0}
for i = 4, #ARGV, 2 do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[i + 1] then
    redis.call('ZADD', KEYS[1], expiry, ARGV[i])
  else
    out[#out + 1] = ARGV[i]
  end
end
local seen = redis.call('HGETALL', KEYS[3])
local recent = now - tonumber(ARGV[3])
for i = 2, #seen, 2 do
  if tonumber(seen[i]) >= recent then out[1] = out[1] + 1 end
end
return out
