-- Serve a ring version from now on: the served version only ever rises.
-- KEYS: 1 the served-version key.  ARGV: 1 the version.
-- Returns the version served after the call.
local served = tonumber(redis.call("GET", KEYS[1])) or 0
local version = tonumber(ARGV[1])
if version > served then
  redis.call("SET", KEYS[1], version)
  return version
end
return served
