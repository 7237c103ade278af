--[[
penalize.lua: record a 429/503 from a host so every worker backs off from it.

  incident count n is reset to 0 when the last incident (lts) is forgive_after or more ago
  with Retry-After:    length = min(retry_after, retry_after_cap)
  without:             d = min(base * 2^n, cap); length = d/2 + (d/2) * jitter   ("equal jitter":
                       at least half the back-off is always kept, the rest spreads the workers)
  pen = max(pen, now + length)          (a penalty never moves backwards)
  m   = min(m(now) * 2, slowdown_cap),  mts = now, n = n + 1, lts = now
  where m(now) = 1 + (m - 1) * 0.5 ^ ((now - mts) / half_life) is the decayed slow-down factor.

KEYS[1]  host bucket "<prefix>:{rl}:h:<host>", hash {tat, pen, m, mts, n, lts}
ARGV[1]  retry_after_us, or -1 when the response had no usable Retry-After
ARGV[2]  base_us          first back-off without Retry-After
ARGV[3]  cap_us           cap of the exponential back-off
ARGV[4]  retry_after_cap_us
ARGV[5]  jitter in [0, 1), drawn by the client (keeps this script deterministic)
ARGV[6]  slowdown_cap     max m
ARGV[7]  half_life_us     of m
ARGV[8]  forgive_us       quiet time after which n resets
ARGV[9]  life_us          how long the key must outlive this incident (forgiveness, m decay)
ARGV[10] slack_ms         added to the expiry, so a TTL is never 0
ARGV[11] now_us           test clock; empty string = redis.call('TIME')

Returns the penalty still to run from now, in microseconds (pen - now, an integer >= 0).
Clock: redis.call('TIME') only (or ARGV[11] in tests).
Expiry: PEXPIRE = (max(tat, pen, now + life) - now) + slack.
]]

local retry_after = tonumber(ARGV[1])
local base = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local retry_after_cap = tonumber(ARGV[4])
local jitter = tonumber(ARGV[5])
local slowdown_cap = tonumber(ARGV[6])
local half_life = tonumber(ARGV[7])
local forgive = tonumber(ARGV[8])
local life = tonumber(ARGV[9])
local slack_ms = tonumber(ARGV[10])

local now
if ARGV[11] ~= nil and ARGV[11] ~= '' then
  now = tonumber(ARGV[11])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function fmt(x)
  return string.format('%.0f', x)
end

local key = KEYS[1]
local v = redis.call('HMGET', key, 'tat', 'pen', 'm', 'mts', 'n', 'lts', 'cdx')
local tat = tonumber(v[1]) or 0
local pen = tonumber(v[2]) or 0
local m = tonumber(v[3]) or 1
local mts = tonumber(v[4]) or 0
local n = tonumber(v[5]) or 0
local lts = tonumber(v[6]) or 0
local cdx = tonumber(v[7]) or 0

if now - lts >= forgive then
  n = 0
end

local length
if retry_after >= 0 then
  length = math.min(retry_after, retry_after_cap)
else
  local d = math.min(base * 2 ^ math.min(n, 62), cap)
  length = math.ceil(d / 2 + (d / 2) * jitter)
end
pen = math.max(pen, now + length)

if m > 1 then
  m = 1 + (m - 1) * 0.5 ^ (math.max(now - mts, 0) / half_life)
end
m = math.min(math.max(m, 1) * 2, slowdown_cap)

redis.call('HSET', key, 'pen', fmt(pen), 'm', string.format('%.6f', m), 'mts', fmt(now),
  'n', fmt(n + 1), 'lts', fmt(now))
local keep = math.max(tat, pen, now + life, cdx)
redis.call('PEXPIRE', key, fmt(math.ceil((keep - now) / 1000) + slack_ms))
return pen - now
