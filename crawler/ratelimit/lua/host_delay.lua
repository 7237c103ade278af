--[[
host_delay.lua: give one host its own minimum interval for a while (robots.txt Crawl-delay).

acquire.lua then spaces that host's requests by max(per-host interval, delay), with no burst,
for every worker of every job sharing this limiter, until the delay's expiry. The host's next
slot moves to at least now + delay: the request that fetched robots.txt counts.

KEYS[1]  host bucket "<prefix>:{rl}:h:<host>" (hash; fields cd, cdx added or replaced)
ARGV[1]  delay, us (0 clears it)
ARGV[2]  for how long, us
ARGV[3]  slack_ms added to the expiry
ARGV[4]  now_us (tests); empty string = redis.call('TIME')
Returns  1.
Clock    redis.call('TIME') only (or ARGV[4]).
]]
local now
if ARGV[4] ~= nil and ARGV[4] ~= '' then
  now = tonumber(ARGV[4])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local delay = tonumber(ARGV[1])
local until_us = now + tonumber(ARGV[2])
local tat = math.max(tonumber(redis.call('HGET', KEYS[1], 'tat')) or 0, now + delay)
redis.call('HSET', KEYS[1], 'cd', string.format('%.0f', delay),
  'cdx', string.format('%.0f', until_us), 'tat', string.format('%.0f', tat))
local keep = math.max(until_us, tat, tonumber(redis.call('HGET', KEYS[1], 'pen')) or 0)
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.ceil((keep - now) / 1000) +
  tonumber(ARGV[3])))
return 1
