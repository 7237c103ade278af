--[[
acquire.lua: reserve request slots under a global and a per-host limit in one atomic step.

GCRA in reservation mode. For each host, in order, the script finds the earliest instant the
request may start, and either commits that slot (GRANTED) or writes nothing (a DEFER). Items of
one call see each other's commits, so a host repeated in one call gets distinct slots.

  host ready  h = max(now, pen, h_tat - h_B * hT)   hT = ceil((h_T, or slow_T if slowed) * m)
  h - now > host_horizon        -> DEFER_HOST,   wait = h - now, nothing written
  s = max(h, g_tat - g_B * g_T)
  s - now > global_horizon      -> DEFER_GLOBAL, wait = s - now, nothing written
  else g_tat = max(g_tat, s) + g_T; h_tat = max(h_tat, s) + hT -> GRANTED, wait = s - now
  (a tat only moves when its interval is > 0: a missing limit has nothing to advance)

m is the slow-down factor written by penalize.lua, decayed here as
  m(now) = 1 + (m - 1) * 0.5 ^ ((now - mts) / half_life), treated as 1 once m - 1 < 0.001.

KEYS[1]     global bucket  "<prefix>:{rl}:g:<scope>"  hash {tat}
KEYS[2..]   host buckets   "<prefix>:{rl}:h:<host>"   hash {tat, pen, m, mts, n, lts, cd, cdx}
            cd = the host's own minimum interval (us; robots.txt Crawl-delay, set by
            host_delay.lua) while now < cdx: the host's interval is max(h_T, cd), burst 0
            (all share the hash tag {rl}: one Redis Cluster slot)
ARGV[1]  g_T      global interval, us (0 = no global limit)
ARGV[2]  g_B      global burst (B + 1 requests may go at once from idle)
ARGV[3]  h_T      per-host interval, us (0 = no per-host limit)
ARGV[4]  h_B      per-host burst
ARGV[5]  host_horizon, us
ARGV[6]  global_horizon, us
ARGV[7]  slow_T   interval, us, for a slowed host without a per-host limit
ARGV[8]  half_life of m, us
ARGV[9]  life     us a host key must outlive its last incident (lts)
ARGV[10] slack_ms added to every expiry, so a TTL is never 0
ARGV[11] now_us   test clock; empty string = redis.call('TIME')

Returns a flat array {decision_1, wait_us_1, decision_2, wait_us_2, ...} for KEYS[2..],
decision 0 = GRANTED, 1 = DEFER_HOST, 2 = DEFER_GLOBAL; waits are integers >= 0.
Clock: redis.call('TIME') only (or ARGV[11] in tests); client clocks never matter.
Every key written gets PEXPIRE = (max(tat, pen, lts + life) - now) + slack, so never 0.
All stored numbers are integers formatted with '%.0f' (tostring loses digits past 1e14).
]]

local g_T = tonumber(ARGV[1])
local g_B = tonumber(ARGV[2])
local h_T = tonumber(ARGV[3])
local h_B = tonumber(ARGV[4])
local host_horizon = tonumber(ARGV[5])
local global_horizon = tonumber(ARGV[6])
local slow_T = tonumber(ARGV[7])
local half_life = tonumber(ARGV[8])
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

local function ttl_ms(until_us)
  return fmt(math.ceil(math.max(until_us - now, 0) / 1000) + slack_ms)
end

local function decayed(m, mts)
  if m <= 1 then
    return 1
  end
  local d = 1 + (m - 1) * 0.5 ^ (math.max(now - mts, 0) / half_life)
  if d - 1 < 0.001 then
    return 1
  end
  return d
end

local g_tat = 0
if g_T > 0 then
  g_tat = tonumber(redis.call('HGET', KEYS[1], 'tat')) or 0
end
local g_dirty = false

-- Host states are cached per key so repeated hosts in one call build on each other's commits.
local hosts = {}
local function load(key)
  local h = hosts[key]
  if h == nil then
    local v = redis.call('HMGET', key, 'tat', 'pen', 'm', 'mts', 'lts', 'cd', 'cdx')
    h = {
      tat = tonumber(v[1]) or 0,
      pen = tonumber(v[2]) or 0,
      m = tonumber(v[3]) or 1,
      mts = tonumber(v[4]) or 0,
      lts = tonumber(v[5]) or 0,
      cd = 0,
      cdx = tonumber(v[7]) or 0,
      dirty = false,
    }
    if h.cdx > now then
      h.cd = tonumber(v[6]) or 0
    end
    hosts[key] = h
  end
  return h
end

local out = {}
for i = 2, #KEYS do
  local h = load(KEYS[i])
  local m = decayed(h.m, h.mts)
  local T = math.max(h_T, h.cd)
  local B = h_B
  if h.cd > 0 then
    B = 0
  end
  if T == 0 and m > 1 then
    T = slow_T
  end
  T = math.ceil(T * m)

  local ready = math.max(now, h.pen)
  if T > 0 then
    ready = math.max(ready, h.tat - B * T)
  end

  local decision, wait
  if ready - now > host_horizon then
    decision, wait = 1, ready - now
  else
    local s = ready
    if g_T > 0 then
      s = math.max(s, g_tat - g_B * g_T)
    end
    if s - now > global_horizon then
      decision, wait = 2, s - now
    else
      if g_T > 0 then
        g_tat = math.max(g_tat, s) + g_T
        g_dirty = true
      end
      if T > 0 then
        h.tat = math.max(h.tat, s) + T
        h.dirty = true
      end
      decision, wait = 0, s - now
    end
  end
  out[#out + 1] = decision
  out[#out + 1] = wait
end

if g_dirty then
  redis.call('HSET', KEYS[1], 'tat', fmt(g_tat))
  redis.call('PEXPIRE', KEYS[1], ttl_ms(g_tat))
end
for key, h in pairs(hosts) do
  if h.dirty then
    local keep = math.max(h.tat, h.pen, h.cdx)
    if h.lts > 0 then
      keep = math.max(keep, h.lts + life)
    end
    redis.call('HSET', key, 'tat', fmt(h.tat))
    redis.call('PEXPIRE', key, ttl_ms(keep))
  end
end
return out
