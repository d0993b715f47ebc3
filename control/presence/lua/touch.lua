-- Heartbeats for many entries in one call: move each deadline forward. ZADD XX never adds,
-- so a heartbeat that arrives after its entry went offline cannot resurrect it.
-- KEYS: 1 expiry zset.  ARGV: 1 deadline ms, 2.. members.  Returns how many were live.
local touched = 0
local args = {}
local n = 0
for i = 2, #ARGV do
  n = n + 1
  args[2 * n - 1] = ARGV[1]
  args[2 * n] = ARGV[i]
  if n == 1000 then
    touched = touched + redis.call("ZADD", KEYS[1], "XX", "CH", unpack(args))
    args = {}
    n = 0
  end
end
if n > 0 then
  touched = touched + redis.call("ZADD", KEYS[1], "XX", "CH", unpack(args))
end
return touched
