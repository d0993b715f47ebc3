-- A resize's mover copies entries in from their previous owner: no events (the user did
-- not come online; its entry moved), counters and both indexes exact. An entry is skipped
-- when this shard has any entry for its (uid, device) (written here since the ring
-- changed: newer), when a tombstone names its connection (it went offline meanwhile), or
-- when its deadline has passed (the sweep would only take it out again).
-- Built for batches of thousands: the user keys are read with MGET and written with MSET,
-- the expiry index takes one ZADD and each counter class one SADD and four HINCRBYs; a
-- record is parsed only when its user already has another device's entry here.
-- KEYS: 1 expiry zset, 2 counters hash, then n node index keys (every class's node), then
--       per entry its user key and its tombstone key
-- ARGV: 1 now ms, 2 n, then the n node names, then c and c classes (node, region,
--       platform), then per entry 5 values: device, packed record, member, deadline ms,
--       its class (1-based)
-- Fenced (see ring_check). Returns the positions (1-based) of the entries adopted.
local stale = ring_check()
if stale then return stale end
local now_ms, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local nkeys = node_keys(3, 3, n)
local classes, at = read_classes(3 + n)
local total = (#ARGV - at + 1) / 5
local ukeys, tkeys = {}, {}
for j = 1, total do
  ukeys[j] = KEYS[2 + n + 2 * j - 1]
  tkeys[j] = KEYS[2 + n + 2 * j]
end
-- Tombstones are rare: one EXISTS over the batch, and one per entry only when any is.
local buried = 0
for s = 1, total, UNPACK_MAX do
  buried = buried + redis.call("EXISTS", unpack(tkeys, s, math.min(s + UNPACK_MAX - 1, total)))
end
local values = mget(ukeys)
local written, order = {}, {}  -- user key -> value this call writes (two devices of a user)
local expiry, adopted = {}, {}
for j = 1, total do
  local i = at + 5 * (j - 1)
  local device, packed, m, deadline = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local cl = classes[tonumber(ARGV[i + 4])]
  if cl and nkeys[cl[1]] and tonumber(deadline) > now_ms
      and (buried == 0 or redis.call("EXISTS", tkeys[j]) == 0) then
    local ukey = ukeys[j]
    local value = written[ukey]
    if value == nil then value = values[j] end
    local new = packed  -- the common case: the user has nothing here yet
    if value then
      local list = entries_of(value)
      if find(list, device) then
        new = nil  -- this shard's entry is newer
      elseif #list > 0 then
        new = value .. SEP .. packed  -- records are stored back to back
      end
    end
    if new then
      if written[ukey] == nil then order[#order + 1] = ukey end
      written[ukey] = new
      expiry[#expiry + 1] = deadline
      expiry[#expiry + 1] = m
      cl[4] = cl[4] + 1
      cl[5][#cl[5] + 1] = m
      adopted[#adopted + 1] = j
    end
  end
end
local pairs_ = {}
for _, ukey in ipairs(order) do
  pairs_[#pairs_ + 1] = ukey
  pairs_[#pairs_ + 1] = written[ukey]
end
call_sliced("MSET", nil, pairs_, UNPACK_MAX)
call_sliced("ZADD", KEYS[1], expiry, UNPACK_MAX)
flush_classes(KEYS[2], nkeys, classes, 1)
return adopted
