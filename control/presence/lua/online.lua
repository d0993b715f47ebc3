-- Logins, many in one call (a reconnect storm arrives in batches): each (user, device)
-- comes online on a connection, replacing any older entry for it.
-- KEYS: 1 expiry zset, 2 counters hash, 3 event stream
-- ARGV: 1 key prefix, 2 stream maxlen, 3 now (s), then per login 5 values:
--       uid, device, packed record, member, deadline ms
-- Returns, per login, the packed record it replaced or "".
local prefix, maxlen, now = ARGV[1], ARGV[2], ARGV[3]
local replaced = {}
for i = 4, #ARGV, 5 do
  local uid, device, packed, m = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local ukey = prefix .. "u:" .. uid
  local list = entries(ukey)
  local f = record(packed)
  local at = find(list, device)
  local old = ""
  if at then
    old = pack(list[at])
    drop(prefix, KEYS[1], KEYS[2], KEYS[3], maxlen, list[at], "replaced", now)
    list[at] = f
  else
    list[#list + 1] = f
  end
  save(ukey, list)
  redis.call("ZADD", KEYS[1], ARGV[i + 4], m)
  redis.call("SADD", prefix .. "n:" .. f[3], m)
  count(KEYS[2], f, 1)
  event(KEYS[3], maxlen, "online", uid, device, f[3], f[4], "", now)
  replaced[#replaced + 1] = old
end
return replaced
