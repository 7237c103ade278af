-- job_batch_start.lua: a worker asks whether it may run batch n of a job, and takes a lease.
--
-- Atomic with pause/resume/cancel, so a batch is never parked after a resume took the parked
-- set (it would be stranded) and never run after a cancel was seen. The lease (an expiry in
-- `leases`, an owner token in `owners`) makes a batch run in one place at a time: a second
-- message for a batch whose live owner still renews it (a broker redelivery, a reaper resend
-- that raced a slow heartbeat) is answered 'leased' and dropped. An owner of '' marks a batch
-- handed back (a message is on its way): anyone may take it; if nobody does before its expiry,
-- a reaper sends it again.
--
-- KEYS[1] meta      hash: state, started, ...
-- KEYS[2] parked    set of batch numbers held while the job is paused
-- KEYS[3] batch     list of the batch's URLs
-- KEYS[4] counters  hash (cancelled)
-- KEYS[5] workers   hash worker name -> last seen (ms)
-- KEYS[6] leases    sorted set batch number -> lease expiry (ms, Redis clock)
-- KEYS[7] owners    hash batch number -> owner token ('' = handed back)
-- KEYS[8] depths    hash batch number -> link depth of its URLs (absent: 0, submitted URLs)
-- KEYS[9] held      set of batch numbers waiting at the level barrier
-- ARGV[1] batch number; ARGV[2] worker name; ARGV[3] owner token; ARGV[4] lease length (ms);
-- ARGV[5] "recently" (ms); ARGV[6] '1' when the job runs level by level (a depth limit)
-- Returns {verdict, workers seen recently on the job, depth of the batch}; verdict 'run',
--         'paused' (parked), 'cancelled' (URLs counted as cancelled), 'gone' (the batch is
--         already done: a redelivered task), 'leased' (running elsewhere), 'held' (a batch of
--         depth d while some URL of depth < d has no record yet, or the job is still being
--         submitted: it waits in `held` until release_held.lua sends it again) or 'missing'.
--         The count is the local fallback limiter's divisor (see lease_renew.lua).
-- Clock   Redis TIME, for lease expiry, started and last-seen times.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing', 0, 0} end
local n = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_ms = string.format('%d', now)
redis.call('HSET', KEYS[5], ARGV[2], now_ms)
local live = 0
local seen = redis.call('HGETALL', KEYS[5])
for i = 2, #seen, 2 do
  if tonumber(seen[i]) >= now - tonumber(ARGV[5]) then live = live + 1 end
end
local function unlease()
  redis.call('ZREM', KEYS[6], n)
  redis.call('HDEL', KEYS[7], n)
end
if redis.call('EXISTS', KEYS[3]) == 0 then
  unlease()
  return {'gone', live, 0}
end
local expiry = tonumber(redis.call('ZSCORE', KEYS[6], n))
if expiry and expiry > now then
  local owner = redis.call('HGET', KEYS[7], n)
  if owner and owner ~= '' and owner ~= ARGV[3] then return {'leased', live, 0} end
end
if state == 'cancelled' then
  redis.call('HINCRBY', KEYS[4], 'cancelled', redis.call('LLEN', KEYS[3]))
  redis.call('DEL', KEYS[3])
  unlease()
  return {'cancelled', live, 0}
end
if state == 'paused' then
  redis.call('SADD', KEYS[2], n)
  unlease()
  return {'paused', live, 0}
end
local depth = tonumber(redis.call('HGET', KEYS[8], n)) or 0
if ARGV[6] == '1' and depth > 0 then
  local open = redis.call('HGET', KEYS[1], 'submitted') == '1'
  for k = 0, depth - 1 do
    if not open then break end
    local c = redis.call('HMGET', KEYS[4], 'lvl:a:' .. k, 'lvl:r:' .. k)
    open = (tonumber(c[2]) or 0) >= (tonumber(c[1]) or 0)
  end
  if not open then
    redis.call('SADD', KEYS[9], n)
    unlease()
    return {'held', live, depth}
  end
end
if state == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'running', 'started', now_ms)
end
redis.call('SREM', KEYS[2], n)  -- resumed: no longer held
redis.call('ZADD', KEYS[6], string.format('%d', now + tonumber(ARGV[4])), n)
redis.call('HSET', KEYS[7], n, ARGV[3])
return {'run', live, depth}
