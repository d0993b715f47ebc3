-- A node died: take up to ARGV[2] of its entries offline at once (reason "node_down").
-- KEYS: 1 node set, 2 expiry zset, 3 counters hash, 4 event stream
-- ARGV: 1 node, 2 limit, 3 key prefix, 4 now (s), 5 stream maxlen
-- Returns how many entries went offline.
local members = redis.call("SPOP", KEYS[1], ARGV[2])
local removed = 0
for _, m in ipairs(members) do
  if expire(ARGV[3], KEYS[2], KEYS[3], KEYS[4], ARGV[5], m, ARGV[1], "node_down", ARGV[4]) then
    removed = removed + 1
  end
end
return removed
