-- store_records.lua: write a batch of records for one job, exactly once per URL.
--
-- Idempotent: a URL whose digest is already in the job's `seen` set is skipped, so a batch
-- that runs twice (a redelivered task, a retried flush) never adds a second record or
-- double-counts. Counters are updated in the same script, so they always match the stream.
-- Cheap per record: one SMISMEMBER, one SADD and ONE stream entry per call (its `r` field
-- holds the new records as JSON lines), whatever the batch size.
--
-- KEYS[1]  seen set      {prefix}:job:{id}:seen      (16-byte URL digests)
-- KEYS[2]  results       {prefix}:job:{id}:results   (stream; field r = JSON lines)
-- KEYS[3]  counters      {prefix}:job:{id}:counters  (hash)
-- KEYS[4]  bodies        {prefix}:job:{id}:bodies    (hash digest -> zlib body)
-- KEYS[5]  rate          {prefix}:job:{id}:rate      (hash: a 64-slot ring of records per
--                        second, fields t<slot> = the second, n<slot> = records written in it)
-- ARGV[1]  n, the number of records
-- ARGV[2..n+1] one value per record: <16-byte digest><meta>\n<json line>, with
--           meta = "<ok 1/0> <status class 2xx..5xx|none> <decoded bytes> <depth> [error class]"
--           (one value, not four: every value costs the client to pack and the server to
--           parse, a real cost on the in-process fakeredis)
-- ARGV[n+2..] pairs <record index 1..n> <zlib body>, for the records that keep a body
-- Returns   {records written (the others were duplicates), 1 when this call completed a link
--           level (every URL accepted at some depth now has a record: held batches of the
--           next depth may run, see frontier.py) else 0}.
-- Clock     Redis TIME, only to bucket the rate ring (status shows the rate of the last 10 s).
local n = tonumber(ARGV[1])
if n == 0 then return {0, 0} end
local digests = {}
for i = 1, n do digests[i] = string.sub(ARGV[i + 1], 1, 16) end
local kept = {}
for j = n + 2, #ARGV, 2 do kept[tonumber(ARGV[j])] = ARGV[j + 1] end
local seen = redis.call('SMISMEMBER', KEYS[1], unpack(digests))
local fresh, lines, bodies, taken = {}, {}, {}, {}
local ok, failed, bytes = 0, 0, 0
local by, levels = {}, {}
for i = 1, n do
  local digest = digests[i]
  if seen[i] == 0 and not taken[digest] then
    taken[digest] = true
    fresh[#fresh + 1] = digest
    local v = ARGV[i + 1]
    local nl = string.find(v, '\n', 17, true)
    lines[#lines + 1] = string.sub(v, nl + 1)
    local okf, sc, nbytes, depth, err = string.match(string.sub(v, 17, nl - 1),
      '^(%d) (%S+) (%d+) (%d+) ?(%S*)$')
    levels[depth] = (levels[depth] or 0) + 1
    if okf == '1' then ok = ok + 1 else failed = failed + 1 end
    if err ~= '' then by['error:' .. err] = (by['error:' .. err] or 0) + 1 end
    by['status:' .. sc] = (by['status:' .. sc] or 0) + 1
    bytes = bytes + tonumber(nbytes)
    if kept[i] ~= nil then
      bodies[#bodies + 1] = digest
      bodies[#bodies + 1] = kept[i]
    end
  end
end
local written = #fresh
if written == 0 then return {0, 0} end
redis.call('SADD', KEYS[1], unpack(fresh))
redis.call('XADD', KEYS[2], '*', 'r', table.concat(lines, '\n'))
if #bodies > 0 then redis.call('HSET', KEYS[4], unpack(bodies)) end
redis.call('HINCRBY', KEYS[3], 'done', written)
redis.call('HINCRBY', KEYS[3], 'ok', ok)
redis.call('HINCRBY', KEYS[3], 'failed', failed)
redis.call('HINCRBY', KEYS[3], 'bytes', bytes)
for k, v in pairs(by) do redis.call('HINCRBY', KEYS[3], k, v) end
local completed = 0
for d, v in pairs(levels) do
  local r = redis.call('HINCRBY', KEYS[3], 'lvl:r:' .. d, v)
  if r >= (tonumber(redis.call('HGET', KEYS[3], 'lvl:a:' .. d)) or 0) then completed = 1 end
end
local sec = tonumber(redis.call('TIME')[1])
local slot = sec % 64
if redis.call('HGET', KEYS[5], 't' .. slot) == string.format('%d', sec) then
  redis.call('HINCRBY', KEYS[5], 'n' .. slot, written)
else
  redis.call('HSET', KEYS[5], 't' .. slot, string.format('%d', sec), 'n' .. slot, written)
end
return {written, completed}
