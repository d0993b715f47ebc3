-- Where are these users: one call per shard with the uids in ONE argument and one string
-- back, so neither side encodes or parses thousands of arguments and replies. Records name
-- their own user and device, so they are returned back to back, separated by \31.
-- KEYS: none (standalone shard).  ARGV: 1 key prefix, 2 uids joined by \31.
local out, n = {}, 0
local prefix = ARGV[1] .. "u:"
for uid in string.gmatch(ARGV[2], "[^\31]+") do
  local records = redis.call("HVALS", prefix .. uid)
  for i = 1, #records do
    n = n + 1
    out[n] = records[i]
  end
end
return table.concat(out, "\31")
