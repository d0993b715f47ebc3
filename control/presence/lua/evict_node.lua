-- A node died: take up to ARGV[2] of its entries offline at once (reason "node_down").
-- KEYS: 1 node set, 2 expiry zset, 3 counters hash, 4 event stream
-- ARGV: 1 node, 2 limit, 3 key prefix, 4 now (s), 5 stream maxlen
-- Returns how many entries went offline.
local sep = "\31"
local members = redis.call("SPOP", KEYS[1], ARGV[2])
local removed = 0
for _, m in ipairs(members) do
  local uid, device, conn = string.match(m, "^(.-)" .. sep .. "(.-)" .. sep .. "(.*)$")
  local ukey = ARGV[3] .. "u:" .. uid
  local old = redis.call("HGET", ukey, device)
  if old then
    local f = {}
    for part in string.gmatch(old .. sep, "(.-)" .. sep) do f[#f + 1] = part end
    if f[4] == conn and f[3] == ARGV[1] then
      redis.call("HDEL", ukey, device)
      redis.call("ZREM", KEYS[2], m)
      redis.call("HINCRBY", KEYS[3], "all", -1)
      redis.call("HINCRBY", KEYS[3], "r:" .. f[7], -1)
      redis.call("HINCRBY", KEYS[3], "n:" .. f[3], -1)
      redis.call("HINCRBY", KEYS[3], "p:" .. f[8], -1)
      redis.call("XADD", KEYS[4], "MAXLEN", "~", ARGV[5], "*", "k", "offline", "u", uid,
        "d", device, "n", f[3], "c", conn, "r", "node_down", "t", ARGV[4])
      removed = removed + 1
    end
  end
end
return removed
