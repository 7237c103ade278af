-- claim.lua: accept URLs into a job, dropping the ones it already has; optionally queue the
-- accepted ones as a new batch in the same atomic step (links found by a worker).
--
-- "Already has" is asked of one of two structures, chosen per job (options `dedupe`):
--   set    KEYS[1] is a set of digests: exact. SMISMEMBER, then one SADD for the fresh ones.
--   bloom  KEYS[1] is a Bloom filter on a bitmap of m bits (ARGV[5] = m > 0), k bits per URL
--          (ARGV[6]): bounded memory, m / 8 bytes whatever the job's size, at the price of
--          false positives (a new URL taken for seen is dropped as a duplicate, never
--          fetched; see crawler/bloom.py). The whole bitmap is allocated on first use.
-- Everything else (cap, counters, answer, batch) is the same in both modes.
--
-- One round trip for the whole call, whatever its size (a pipeline of SADDs costs the client a
-- command per URL). Set mode: two set commands per call (a loop of SADDs costs fakeredis as
-- much). Bloom mode: GETBIT and SETBIT per bit, inside the script; measured faster on Redis 7
-- than BITFIELD with all of a call's bits (7.2 vs 8.0 us per URL at k = 7: BITFIELD parses
-- its many arguments), and a new URL's test stops at its first clear bit. On fakeredis each
-- SETBIT copies the whole bitmap: bloom mode is for a real server (see crawler/bloom.py).
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
-- KEYS[1]  set mode:   queued  {prefix}:job:{id}:queued  set of 16-byte URL digests
--          bloom mode: bloom   {prefix}:job:{id}:bloom   bitmap string of ARGV[5] bits
-- KEYS[2]  counters  {prefix}:job:{id}:counters  hash: total, duplicates (input) or
--                    link_duplicates (links), over_limit, lvl:a:<depth> (accepted per level)
-- KEYS[3]  answer    {prefix}:job:{id}:claim:<random call id>  (string, expires after 1 h)
-- KEYS[4]  batch     {prefix}:job:{id}:batch:<n>  (only with a batch)
-- KEYS[5]  leases    KEYS[6] owners    KEYS[7] depths (hash batch n -> link depth)
-- ARGV[1]  cap: the job's max_pages (0 = none): URLs beyond it are dropped as over_limit
-- ARGV[2]  depth of these URLs (counted per level: lvl:a:<depth>)
-- ARGV[3]  batch number, or '' for no batch; ARGV[4] pending lease length (ms)
-- ARGV[5]  m: bits of the Bloom filter, a multiple of 8, at most 2^32; 0 = set mode
-- ARGV[6]  k: bits per URL (bloom mode; ignored in set mode)
-- ARGV[7..] the digests, in order; with a batch, digest and URL alternate
-- Returns  a string with one character per URL: '1' accepted, '0' seen before (earlier in
--          this job, or earlier in this same call; in bloom mode also a false positive),
--          '2' over the cap. An error if the bitmap exists with another size than m (the
--          caller's options disagree with the job's).
-- Clock    Redis TIME, only for the pending lease's expiry.
local FIRST = 7  -- ARGV index of the first digest

local done = redis.call('GET', KEYS[3])
if done then return done end
local cap = tonumber(ARGV[1])
local batched = ARGV[3] ~= ''
local m, k = tonumber(ARGV[5]), tonumber(ARGV[6])
local bloom = m > 0
local step = batched and 2 or 1
local digests = {}
for i = FIRST, #ARGV, step do digests[#digests + 1] = ARGV[i] end
if #digests == 0 then return '' end

-- The k bit offsets of a digest, as crawler.bloom.positions computes them: h1, h2 = its first
-- two big-endian 32-bit words, h2 odd; (h1 + i * h2) mod m. Numbers are doubles: every value
-- here is below 2^33, so exact; an offset (< 2^32) reaches Redis as its exact decimal.
local function bit_offsets(d)
  local out = {}
  local b1, b2, b3, b4, b5, b6, b7, b8 = string.byte(d, 1, 8)
  local pos = (((b1 * 256 + b2) * 256 + b3) * 256 + b4) % m
  local h2 = ((b5 * 256 + b6) * 256 + b7) * 256 + b8
  if h2 % 2 == 0 then h2 = h2 + 1 end
  local inc = h2 % m
  if inc == 0 then inc = 1 end
  for j = 1, k do
    out[j] = pos
    pos = (pos + inc) % m
  end
  return out
end

-- known[i] == 1: digest i is in the job already (bloom: all its k bits are set; the test
-- stops at the first clear bit, so a new URL costs about 2 GETBITs, a known one k).
local known, offsets = {}, {}
if bloom then
  local size = redis.call('STRLEN', KEYS[1])
  if size == 0 then
    redis.call('SETBIT', KEYS[1], m - 1, 0)  -- allocate it whole: its memory is fixed from now
  elseif size * 8 ~= m then
    return redis.error_reply(string.format(
      'claim: the Bloom filter %s has %d bits, this call expects %d', KEYS[1], size * 8, m))
  end
  for i = 1, #digests do
    local own = bit_offsets(digests[i])
    offsets[i] = own
    known[i] = 1
    for j = 1, k do
      if redis.call('GETBIT', KEYS[1], own[j]) == 0 then known[i] = 0; break end
    end
  end
else
  known = redis.call('SMISMEMBER', KEYS[1], unpack(digests))
end

local room = -1
if cap > 0 then
  room = math.max(cap - (tonumber(redis.call('HGET', KEYS[2], 'total')) or 0), 0)
end
local flags, fresh, urls, taken, owned = {}, {}, {}, {}, {}  -- owned: offsets of the fresh
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
    if batched then urls[#urls + 1] = ARGV[FIRST - 1 + 2 * i] end
    if bloom then owned[#owned + 1] = offsets[i] end
    flags[i] = '1'
    if room > 0 then room = room - 1 end
  end
end
if #fresh > 0 then
  if bloom then
    for i = 1, #owned do
      for j = 1, k do redis.call('SETBIT', KEYS[1], owned[i][j], 1) end
    end
  else
    redis.call('SADD', KEYS[1], unpack(fresh))
  end
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
