-- max_rooms_per_actor for rocketchat-shim (spec/shim.md 9.4): the distinct rooms one actor read
-- within a sliding window, as a sorted set in KEYS[1] (member = room id, score = last read in
-- milliseconds on Redis's clock, so the replicas' clocks do not matter).
-- ARGV[1] = room id, ARGV[2] = limit (rooms), ARGV[3] = window in milliseconds,
-- ARGV[4] = "admit" or "give_back".
-- Returns {1, new (1|0), 0} when admitted, {0, 0, wait_ms} when the window is full, and for
-- give_back {1, removed, 0}. The key expires by itself one window after its last read.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local room = ARGV[1]
local limit = tonumber(ARGV[2])
local per = tonumber(ARGV[3])
if ARGV[4] == 'give_back' then
  return {1, redis.call('ZREM', KEYS[1], room), 0}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - per)
local known = redis.call('ZSCORE', KEYS[1], room)
if not known and redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local wait = tonumber(oldest[2]) + per - now
  if wait < 1 then wait = 1 end
  return {0, 0, wait}
end
redis.call('ZADD', KEYS[1], now, room)
redis.call('PEXPIRE', KEYS[1], per)
if known then
  return {1, 0, 0}
end
return {1, 1, 0}
