-- claim.lua: accept a batch of URLs into a job, dropping the ones it already has.
--
-- One round trip for the whole batch (a pipeline of SADDs costs the client a command each).
--
-- KEYS[1]  queued    {prefix}:job:{id}:queued    set of 16-byte URL digests
-- KEYS[2]  counters  {prefix}:job:{id}:counters  hash: total, duplicates
-- ARGV     the digests of the batch, in order
-- Returns  a string with one character per digest: '1' new to the job, '0' seen before.
-- Clock    none.
local flags = {}
local fresh = 0
for i = 1, #ARGV do
  local added = redis.call('SADD', KEYS[1], ARGV[i])
  flags[i] = added == 1 and '1' or '0'
  fresh = fresh + added
end
redis.call('HINCRBY', KEYS[2], 'total', fresh)
redis.call('HINCRBY', KEYS[2], 'duplicates', #ARGV - fresh)
return table.concat(flags)
