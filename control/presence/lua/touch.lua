-- Heartbeats for many entries in one call: move each live entry's deadline forward, and
-- name the ones that are gone. ZADD XX never adds, so a heartbeat that arrives after its
-- entry went offline cannot resurrect it; the caller decides (a node that still holds the
-- connection logs it in again, e.g. after this shard lost its data in a restart).
-- KEYS: 1 expiry zset.  ARGV: 1 deadline ms, 2.. members.  Returns the missing members.
local missing = {}
for start = 2, #ARGV, 1000 do
  local stop = math.min(start + 999, #ARGV)
  local scores = redis.call("ZMSCORE", KEYS[1], unpack(ARGV, start, stop))
  local args, n = {}, 0
  for i = start, stop do
    if scores[i - start + 1] then
      n = n + 1
      args[2 * n - 1] = ARGV[1]
      args[2 * n] = ARGV[i]
    else
      missing[#missing + 1] = ARGV[i]
    end
  end
  if n > 0 then
    redis.call("ZADD", KEYS[1], "XX", unpack(args))
  end
end
return missing
