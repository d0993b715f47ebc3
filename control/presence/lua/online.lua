-- Logins, many in one call (a reconnect storm arrives in batches): each (user, device)
-- comes online on a connection, replacing any older entry for it.
-- KEYS: 1 expiry zset, 2 counters hash, 3 event stream, then n node index keys (every
--       login's node, and any other the caller knows), then one user key per login
-- ARGV: 1 stream maxlen, 2 now (s), 3 n, then the n node names, then per login 5 values:
--       uid, device, packed record, member, deadline ms
-- Returns, per login, the packed record it replaced or "", or {node} when the entry it
-- would replace is on a node whose index key was not passed (that login did nothing:
-- run it again with the key).
-- Fenced (see ring_check).
local stale = ring_check()
if stale then return stale end
local maxlen, now, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local nkeys = node_keys(4, 4, n)
local replaced = {}
local j = 0
for i = 4 + n, #ARGV, 5 do
  j = j + 1
  local ukey = KEYS[3 + n + j]
  local uid, device, packed, m = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local list = entries(ukey)
  local f = record(packed)
  local at = find(list, device)
  if at and not nkeys[list[at][3]] then
    replaced[j] = {list[at][3]}
  else
    local old = ""
    if at then
      old = pack(list[at])
      drop(nkeys[list[at][3]], KEYS[1], KEYS[2], KEYS[3], maxlen, list[at], "replaced", now)
      list[at] = f
    else
      list[#list + 1] = f
    end
    save(ukey, list)
    redis.call("ZADD", KEYS[1], ARGV[i + 4], m)
    redis.call("SADD", nkeys[f[3]], m)
    count(KEYS[2], f, 1)
    event(KEYS[3], maxlen, "online", uid, device, f[3], f[4], "", now)
    replaced[j] = old
  end
end
return replaced
