-- Shared by every presence script (prepended when the scripts are loaded).
-- In memory a record is a list {uid, device, node, conn, epoch, status, region, platform}.
-- Stored, it is uid␟node␟device␞conn␞epoch␞status␞region␞platform: three ␟-fields, the
-- last holding the rest (␞-separated). A user's records live in ONE string key, back to
-- back (␟ between them too), so locate is a plain MGET whose values are joined and split
-- once, and a push — which needs only uid and node — splits out three strings per record,
-- not eight. Members of the expiry and node indexes are uid␟device␟conn.
local SEP = "\31"
local RS = "\30"

local function split(s, sep)
  local out = {}
  for part in string.gmatch(s .. sep, "(.-)" .. sep) do out[#out + 1] = part end
  return out
end

local function from_parts(uid, node, rest)
  local r = split(rest, RS)
  if #r ~= 6 then return nil end
  return {uid, r[1], node, r[2], r[3], r[4], r[5], r[6]}
end

local function pack(f)
  return f[1] .. SEP .. f[3] .. SEP .. table.concat({f[2], f[4], f[5], f[6], f[7], f[8]}, RS)
end

-- One packed record (as the client sends it).
local function record(packed)
  local p = split(packed, SEP)
  return from_parts(p[1], p[2], p[3])
end

-- A user's entries, each a record list (a user has a handful of devices). A value that is
-- not whole records (a hand edit, another version) reads as no entries, and a record
-- that is not whole is left out: either is overwritten by the next save.
-- A user's entries from a value already read (entries(ukey) without the GET).
local function entries_of(value)
  local list = {}
  if not value then return list end
  local p = split(value, SEP)
  if #p % 3 ~= 0 then return list end
  for i = 1, #p - 2, 3 do
    local f = from_parts(p[i], p[i + 1], p[i + 2])
    if f then list[#list + 1] = f end
  end
  return list
end

local function entries(ukey)
  return entries_of(redis.call("GET", ukey))
end

local function find(list, device)
  for i = 1, #list do
    if list[i][2] == device then return i end
  end
  return nil
end

local function save(ukey, list)
  if #list == 0 then
    redis.call("DEL", ukey)
    return
  end
  local parts = {}
  for i = 1, #list do parts[i] = pack(list[i]) end
  redis.call("SET", ukey, table.concat(parts, SEP))
end

-- Counters move together with the entries, so counts stay exact.
local function count(cnt, f, delta)
  redis.call("HINCRBY", cnt, "all", delta)
  redis.call("HINCRBY", cnt, "r:" .. f[7], delta)
  redis.call("HINCRBY", cnt, "n:" .. f[3], delta)
  redis.call("HINCRBY", cnt, "p:" .. f[8], delta)
end

-- The same, summed in a table first: a batch of thousands then pays one HINCRBY per
-- distinct counter (a handful of regions, nodes, platforms), not four per entry.
local function tally(acc, f, delta)
  for _, name in ipairs({"all", "r:" .. f[7], "n:" .. f[3], "p:" .. f[8]}) do
    acc[name] = (acc[name] or 0) + delta
  end
end

local function flush_tally(cnt, acc)
  for name, delta in pairs(acc) do
    if delta ~= 0 then redis.call("HINCRBY", cnt, name, delta) end
  end
end

local function event(ev, maxlen, kind, uid, device, node, conn, reason, now)
  redis.call("XADD", ev, "MAXLEN", "~", maxlen, "*", "k", kind, "u", uid, "d", device,
    "n", node, "c", conn, "r", reason, "t", now)
end

-- The node index keys the caller passed, by node name: KEYS[first], ... for the n names
-- ARGV[names], ... Every key a script touches comes in KEYS (Redis Cluster needs that);
-- an entry on a node whose key was not passed is left alone and its node named in the
-- reply, so the caller runs the script again with that key.
local function node_keys(first, names, n)
  local map = {}
  for i = 0, n - 1 do map[ARGV[names + i]] = KEYS[first + i] end
  return map
end

-- An entry (fields f) leaves both indexes (its node's index is nkey) and the counters,
-- and an offline event says why. The caller takes it out of the user's list and saves it.
local function drop(nkey, exp, cnt, ev, maxlen, f, reason, now)
  local m = f[1] .. SEP .. f[2] .. SEP .. f[4]
  redis.call("ZREM", exp, m)
  redis.call("SREM", nkey, m)
  count(cnt, f, -1)
  event(ev, maxlen, "offline", f[1], f[2], f[3], f[4], reason, now)
end

-- The entry of member m (uid␟device␟conn) in the user key ukey, if it is still that
-- connection's: the user's list and the entry's index in it; nil otherwise.
local function member_entry(ukey, m)
  local _, device, conn = string.match(m, "^(.-)" .. SEP .. "(.-)" .. SEP .. "(.*)$")
  local list = entries(ukey)
  local i = find(list, device)
  if not i or list[i][4] ~= conn then return nil end
  return list, i
end

-- Fencing. A script that writes for a ring version gets the served-version key as its LAST
-- key and the caller's ring version as its LAST argument; this takes both off (so the
-- script's own KEYS and ARGV read as before) and compares, before anything is written:
-- an older version is refused with an error reply "STALE_RING <served>" (the client maps
-- it to StaleRing and reloads the ring); a newer one becomes the served version, so the
-- first writer on a new ring fences the writers still on the old one out. An equal
-- version (nearly every call) costs one GET.
local function ring_check()
  local key = table.remove(KEYS)
  local version = tonumber(table.remove(ARGV)) or 0
  local served = tonumber(redis.call("GET", key)) or 0
  if version < served then
    return redis.error_reply("STALE_RING " .. served)
  end
  if version > served then redis.call("SET", key, version) end
  return nil
end

-- The mover's batches (adopt, exact release) take no record apart in the common case:
-- the caller groups the entries by counter class, (node, region, platform), and names
-- each entry's class, so counters and the node index need no parsing.

-- The c classes from ARGV[at]: node, region, platform each. Returns them and the next
-- argument's position.
local function read_classes(at)
  local c = tonumber(ARGV[at])
  local classes = {}
  for k = 1, c do
    local i = at + 1 + 3 * (k - 1)
    classes[k] = {ARGV[i], ARGV[i + 1], ARGV[i + 2], 0, {}}  -- counted, members
  end
  return classes, at + 1 + 3 * c
end

-- A command over many arguments, in slices Lua's unpack can take.
local UNPACK_MAX = 4000
local function call_sliced(cmd, key, args, step)
  for s = 1, #args, step do
    local e = math.min(s + step - 1, #args)
    if key then
      redis.call(cmd, key, unpack(args, s, e))
    else
      redis.call(cmd, unpack(args, s, e))
    end
  end
end

local function mget(keys)
  local out = {}
  for s = 1, #keys, UNPACK_MAX do
    local got = redis.call("MGET", unpack(keys, s, math.min(s + UNPACK_MAX - 1, #keys)))
    for i = 1, #got do out[s + i - 1] = got[i] end
  end
  return out
end

-- Counters and node indexes of the classes' entries, one call per class and counter:
-- delta is +1 (adopted; SADD) or -1 (released; SREM).
local function flush_classes(cnt, nkeys, classes, delta)
  local acc = {}
  for _, cl in ipairs(classes) do
    if cl[4] > 0 then
      for _, name in ipairs({"all", "r:" .. cl[2], "n:" .. cl[1], "p:" .. cl[3]}) do
        acc[name] = (acc[name] or 0) + delta * cl[4]
      end
      call_sliced(delta > 0 and "SADD" or "SREM", nkeys[cl[1]], cl[5], UNPACK_MAX)
    end
  end
  for name, d in pairs(acc) do
    if d ~= 0 then redis.call("HINCRBY", cnt, name, d) end
  end
end
