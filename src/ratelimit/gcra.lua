-- GCRA for rocketchat-shim: one request spent from the budget in KEYS[1].
-- ARGV[1] = emission interval in microseconds (per / requests), ARGV[2] = burst (requests).
-- Uses Redis's own clock, so the replicas' clocks do not matter; the key expires by itself
-- once the budget is full again (idle keys cost nothing).
-- Returns {allowed (1|0), remaining, reset_us}: reset_us is, when allowed, the time until the
-- budget is full again, and when refused, the time until the next request is allowed.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tolerance = interval * burst
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local new_tat = tat + interval
local diff = now - (new_tat - tolerance)
if diff < 0 then
  return {0, 0, -diff}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor(diff / interval), new_tat - now}
