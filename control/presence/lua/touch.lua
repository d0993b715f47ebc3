-- Heartbeats for many entries in one call: move each live entry's deadline forward, and
-- name the ones that are gone. ZADD XX never adds, so a heartbeat that arrives after its
-- entry went offline cannot resurrect it; the caller decides (a node that still holds the
-- connection logs it in again, e.g. after this shard lost its data in a restart).
-- KEYS: 1 expiry zset.  ARGV: deadline ms and member, pair after pair (the caller
-- interleaves them, so ZADD takes its arguments as they came, with no table built here).
-- Fenced (see ring_check). Returns the missing members.
local stale = ring_check()
if stale then return stale end
local missing = {}
for start = 1, #ARGV, 2000 do
  local stop = math.min(start + 1999, #ARGV)
  local changed = redis.call("ZADD", KEYS[1], "XX", "CH", unpack(ARGV, start, stop))
  -- Every live member's deadline moved: nothing is missing, and no ZMSCORE is paid (it
  -- cost as much as the ZADD). Fewer: some are gone, or already had this deadline.
  if changed < (stop - start + 1) / 2 then
    local members = {}
    for i = start + 1, stop, 2 do
      members[#members + 1] = ARGV[i]
    end
    local scores = redis.call("ZMSCORE", KEYS[1], unpack(members))
    for j = 1, #members do
      if not scores[j] then
        missing[#missing + 1] = members[j]
      end
    end
  end
end
return missing
