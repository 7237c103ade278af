-- job_live.lua: a worker's once-a-second live report, kept LIVE_TTL ms after the last one.
--
-- Only while the job's keys have no expiry: once a job has ended and its keys were given their
-- TTL (crawler/retention.py), a late report (a batch's last, zeroing its in-flight count) must
-- not give the live hash a later expiry than the job's own.
--
-- KEYS[1] live  hash worker -> report (JSON)
-- KEYS[2] meta  hash (its PTTL says whether the job's expiry is set)
-- ARGV[1] worker; ARGV[2] report; ARGV[3] LIVE_TTL (ms)
-- Returns 1 when written, 0 when the job's keys already expire (or it is gone).
if redis.call('PTTL', KEYS[2]) ~= -1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
