-- Shared by every presence script (prepended when the scripts are loaded).
-- A record is uid␟device␟node␟conn␟epoch␟status␟region␟platform; members of the
-- expiry and node indexes are uid␟device␟conn.
local SEP = "\31"

local function fields(record)
  local f = {}
  for part in string.gmatch(record .. SEP, "(.-)" .. SEP) do f[#f + 1] = part end
  return f
end

-- Counters move together with the entries, so counts stay exact.
local function count(cnt, f, delta)
  redis.call("HINCRBY", cnt, "all", delta)
  redis.call("HINCRBY", cnt, "r:" .. f[7], delta)
  redis.call("HINCRBY", cnt, "n:" .. f[3], delta)
  redis.call("HINCRBY", cnt, "p:" .. f[8], delta)
end

local function event(ev, maxlen, kind, uid, device, node, conn, reason, now)
  redis.call("XADD", ev, "MAXLEN", "~", maxlen, "*", "k", kind, "u", uid, "d", device,
    "n", node, "c", conn, "r", reason, "t", now)
end

-- Take one entry offline: the record (parsed as f) leaves the user hash, both indexes and
-- the counters, and an offline event says why.
local function remove(prefix, exp, cnt, ev, maxlen, f, reason, now)
  local m = f[1] .. SEP .. f[2] .. SEP .. f[4]
  redis.call("HDEL", prefix .. "u:" .. f[1], f[2])
  redis.call("ZREM", exp, m)
  redis.call("SREM", prefix .. "n:" .. f[3], m)
  count(cnt, f, -1)
  event(ev, maxlen, "offline", f[1], f[2], f[3], f[4], reason, now)
end
