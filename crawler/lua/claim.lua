-- claim.lua: accept a batch of URLs into a job, dropping the ones it already has.
--
-- One round trip and two set commands for the whole batch, whatever its size (a pipeline
-- of SADDs costs the client a command per URL; a loop of SADDs costs fakeredis as much).
--
-- Idempotent per call: the answer is kept for an hour under the call's own key, so a client
-- that retries a call whose reply was lost (a connection cut just after Redis ran it) gets the
-- same answer, instead of "seen before" for every URL it has not stored yet (they would be
-- counted but never fetched).
--
-- KEYS[1]  queued    {prefix}:job:{id}:queued    set of 16-byte URL digests
-- KEYS[2]  counters  {prefix}:job:{id}:counters  hash: total, duplicates
-- KEYS[3]  answer    {prefix}:job:{id}:claim:<random call id>  (string, expires after 1 h)
-- ARGV     the digests of the batch, in order
-- Returns  a string with one character per digest: '1' new to the job, '0' seen before
--          (earlier in this job, or earlier in this same batch).
-- Clock    none.
local done = redis.call('GET', KEYS[3])
if done then return done end
local known = redis.call('SMISMEMBER', KEYS[1], unpack(ARGV))
local flags, fresh, taken = {}, {}, {}
for i = 1, #ARGV do
  local d = ARGV[i]
  if known[i] == 0 and not taken[d] then
    taken[d] = true
    fresh[#fresh + 1] = d
    flags[i] = '1'
  else
    flags[i] = '0'
  end
end
if #fresh > 0 then redis.call('SADD', KEYS[1], unpack(fresh)) end
redis.call('HINCRBY', KEYS[2], 'total', #fresh)
redis.call('HINCRBY', KEYS[2], 'duplicates', #ARGV - #fresh)
local answer = table.concat(flags)
redis.call('SET', KEYS[3], answer, 'EX', 3600)
return answer
