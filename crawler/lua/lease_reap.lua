-- lease_reap.lua: find the batches of one job whose lease ran out, and claim them for a resend.
--
-- A lease runs out when its owner stopped renewing it (killed, frozen, cut off) or when a
-- handed-back batch's message never arrived. Each such batch gets a fresh lease with owner ''
-- (handed back) before the caller sends a new message, so two reapers never both resend it
-- within one lease length, and a reaper that dies before sending is covered by the next one.
--
-- KEYS[1] leases   sorted set batch number -> lease expiry (ms)
-- KEYS[2] owners   hash batch number -> owner token
-- KEYS[3] meta     hash (a job whose keys are gone has nothing to reap)
-- ARGV[1] lease length (ms)
-- Returns {1 when the job can leave the reapers' list (finished or cancelled, no lease held)
--          else 0, batch numbers to send again...}. Only such a job leaves the list: a job
--          still running may get a new lease any moment (its worker adds it back, but might
--          die before doing so).
-- Clock   Redis TIME.
if redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  return {1}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
local expiry = string.format('%d', now + tonumber(ARGV[1]))
local state = redis.call('HGET', KEYS[3], 'state')
local done = (state == 'finished' or state == 'cancelled') and redis.call('ZCARD', KEYS[1]) == 0
local out = {done and 1 or 0}
for _, n in ipairs(expired) do
  redis.call('ZADD', KEYS[1], expiry, n)
  redis.call('HSET', KEYS[2], n, '')
  out[#out + 1] = n
end
return out
