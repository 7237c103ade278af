-- release_held.lua: a link level is complete; let the batches held at the barrier go again.
--
-- Each held batch gets a pending lease (owner '') before the caller sends its message, so a
-- caller that dies before sending is covered by a reaper. A batch released too early (another
-- level is still open) is simply held again by job_batch_start.lua.
--
-- KEYS[1] held    set of batch numbers
-- KEYS[2] leases  sorted set batch number -> lease expiry (ms)
-- KEYS[3] owners  hash batch number -> owner token
-- ARGV[1] pending lease length (ms)
-- Returns the batch numbers to send.
-- Clock   Redis TIME.
local held = redis.call('SMEMBERS', KEYS[1])
if #held == 0 then return {} end
redis.call('DEL', KEYS[1])
local t = redis.call('TIME')
local expiry = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  + tonumber(ARGV[1]))
for _, n in ipairs(held) do
  redis.call('ZADD', KEYS[2], expiry, n)
  redis.call('HSET', KEYS[3], n, '')
end
return held
