-- Turn entries whose deadline passed offline (reason "timeout"), at most ARGV[2] per call.
-- KEYS: 1 expiry zset, 2 counters hash, 3 event stream
-- ARGV: 1 now ms, 2 limit, 3 key prefix, 4 now (s), 5 stream maxlen
-- Returns the removed entries' packed records.
local due = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", ARGV[1], "LIMIT", 0, ARGV[2])
local out = {}
for _, m in ipairs(due) do
  redis.call("ZREM", KEYS[1], m)
  local record = expire(ARGV[3], KEYS[1], KEYS[2], KEYS[3], ARGV[5], m, nil, "timeout", ARGV[4])
  if record then out[#out + 1] = record end
end
return out
