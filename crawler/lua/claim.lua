-- claim.lua: accept URLs into a job, dropping the ones it already has; optionally queue the
-- accepted ones as a new batch in the same atomic step (links found by a worker).
--
-- One round trip and two set commands for the whole call, whatever its size (a pipeline of
-- SADDs costs the client a command per URL; a loop of SADDs costs fakeredis as much).
--
-- Idempotent per call: the answer is kept for an hour under the call's own key, so a client
-- that retries a call whose reply was lost (a connection cut just after Redis ran it) gets the
-- same answer, instead of "seen before" for every URL it has not stored yet (they would be
-- counted but never fetched).
--
-- With a batch (links found on pages): the accepted URLs are written to the batch list and the
-- batch gets a pending lease (owner '', see leases.py) BEFORE the caller sends its message and
-- before the pages they came from are recorded. So a worker that dies at any point loses no
-- link: either its pages get no record and are fetched again (their links are found again and
-- dropped here as seen), or the batch exists and a reaper sends it if its message never left.
-- And `total` grows before the pages' records land, so a job is never finished early.
--
-- KEYS[1]  queued    {prefix}:job:{id}:queued    set of 16-byte URL digests
-- KEYS[2]  counters  {prefix}:job:{id}:counters  hash: total, duplicates (input) or
--                    link_duplicates (links), over_limit, lvl:a:<depth> (accepted per level)
-- KEYS[3]  answer    {prefix}:job:{id}:claim:<random call id>  (string, expires after 1 h)
-- KEYS[4]  batch     {prefix}:job:{id}:batch:<n>  (only with a batch)
-- KEYS[5]  leases    KEYS[6] owners    KEYS[7] depths (hash batch n -> link depth)
-- ARGV[1]  cap: the job's max_pages (0 = none): URLs beyond it are dropped as over_limit
-- ARGV[2]  depth of these URLs (counted per level: lvl:a:<depth>)
-- ARGV[3]  batch number, or '' for no batch; ARGV[4] pending lease length (ms)
-- ARGV[5..] the digests, in order; with a batch, digest and URL alternate
-- Returns  a string with one character per URL: '1' accepted, '0' seen before (earlier in
--          this job, or earlier in this same call), '2' over the cap.
-- Clock    Redis TIME, only for the pending lease's expiry.
local done = redis.call('GET', KEYS[3])
if done then return done end
local cap = tonumber(ARGV[1])
local batched = ARGV[3] ~= ''
local step = batched and 2 or 1
local digests = {}
for i = 5, #ARGV, step do digests[#digests + 1] = ARGV[i] end
if #digests == 0 then return '' end
local known = redis.call('SMISMEMBER', KEYS[1], unpack(digests))
local room = -1
if cap > 0 then
  room = math.max(cap - (tonumber(redis.call('HGET', KEYS[2], 'total')) or 0), 0)
end
local flags, fresh, urls, taken = {}, {}, {}, {}
local over = 0
for i = 1, #digests do
  local d = digests[i]
  if known[i] == 1 or taken[d] then
    flags[i] = '0'
  elseif room == 0 then
    flags[i] = '2'
    over = over + 1
  else
    taken[d] = true
    fresh[#fresh + 1] = d
    if batched then urls[#urls + 1] = ARGV[4 + 2 * i] end
    flags[i] = '1'
    if room > 0 then room = room - 1 end
  end
end
if #fresh > 0 then
  redis.call('SADD', KEYS[1], unpack(fresh))
  redis.call('HINCRBY', KEYS[2], 'total', #fresh)
  redis.call('HINCRBY', KEYS[2], 'lvl:a:' .. ARGV[2], #fresh)
  if batched then
    for i = 1, #urls, 1000 do
      redis.call('RPUSH', KEYS[4], unpack(urls, i, math.min(i + 999, #urls)))
    end
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call('ZADD', KEYS[5], string.format('%d', now + tonumber(ARGV[4])), ARGV[3])
    redis.call('HSET', KEYS[6], ARGV[3], '')
    redis.call('HSET', KEYS[7], ARGV[3], ARGV[2])
  end
end
redis.call('HINCRBY', KEYS[2], batched and 'link_duplicates' or 'duplicates',
  #digests - #fresh - over)
if over > 0 then redis.call('HINCRBY', KEYS[2], 'over_limit', over) end
local answer = table.concat(flags)
redis.call('SET', KEYS[3], answer, 'EX', 3600)
return answer
