-- Where are these users: one HGETALL each, in one round trip per shard.
-- KEYS: user hashes.  Returns one flat {device, packed, ...} list per key.
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call("HGETALL", key)
end
return out
