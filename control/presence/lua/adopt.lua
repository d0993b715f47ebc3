-- A resize's mover copies entries in from their previous owner: no events (the user did
-- not come online; its entry moved), counters and both indexes exact. An entry is skipped
-- when this shard has any entry for its (uid, device) (written here since the ring
-- changed: newer), when a tombstone names its connection (it went offline meanwhile), or
-- when its deadline has passed (the sweep would only take it out again).
-- KEYS: 1 expiry zset, 2 counters hash, then n node index keys (every entry's node), then
--       per entry its user key and its tombstone key
-- ARGV: 1 now ms, 2 n, then the n node names, then per entry 4 values: device, packed
--       record, member, deadline ms
-- Fenced (see ring_check). Returns the positions (1-based) of the entries adopted.
local stale = ring_check()
if stale then return stale end
local now_ms, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local nkeys = node_keys(3, 3, n)
local adopted = {}
local acc = {}
local j = 0
for i = 3 + n, #ARGV, 4 do
  j = j + 1
  local ukey, tkey = KEYS[2 + n + 2 * j - 1], KEYS[2 + n + 2 * j]
  local device, packed, m, deadline = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local f = record(packed)
  if f and nkeys[f[3]] and tonumber(deadline) > now_ms
      and redis.call("EXISTS", tkey) == 0 then
    local value = redis.call("GET", ukey)
    local list = value and entries(ukey) or {}
    if not find(list, device) then
      if value then  -- another device's entries: parsed, appended, written back
        list[#list + 1] = f
        save(ukey, list)
      else  -- the common case: the user has nothing here yet, no parsing at all
        redis.call("SET", ukey, packed)
      end
      redis.call("ZADD", KEYS[1], deadline, m)
      redis.call("SADD", nkeys[f[3]], m)
      tally(acc, f, 1)
      adopted[#adopted + 1] = j
    end
  end
end
flush_tally(KEYS[2], acc)
return adopted
