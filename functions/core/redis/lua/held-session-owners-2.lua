--[[
  heldSessionOwners: which of the session incarnations a runtime reports holding memory for are owned here (read
  only). An incarnation is owned while its session record holds it (field i) ACTIVE (A) or being destroyed (D), or
  while a migration's release of it is pending in the bucket's migrations hash. The reconciler asks this for a whole
  page of a runtime's listing, one call per bucket, and looks closer (sightOrphan, with declared keys) only at what
  is not owned; so a record a Cluster resharding has just moved, read here as missing, costs one closer look, never
  a release.

  KEYS[1] bucket migrations (HASH `<sessionId>:<incarnation>` -> `<pid>|<bytes>|<token>`)
  KEYS[2] bucket quiet hash (includes/quiet.lua): the records that are quiet
  ARGV[1] the bucket's session record key prefix (`<prefix>:{<bucket>}:s:`): records carry the bucket's hash tag,
          so on Redis Cluster they live in KEYS[1]'s slot
  ARGV[2i], ARGV[2i+1]   session id and incarnation of held allocation i

  Returns a flat array, one entry per allocation, in order: 1 owned, 0 not owned.
]]
-- @include "quiet"
local call = redis.call
local migrationsKey, quietKey, recordPrefix = KEYS[1], KEYS[2], ARGV[1]
local out = {}
for k = 2, #ARGV, 2 do
  local sessionId, inc = ARGV[k], ARGV[k + 1]
  local owned = 0
  if call('HEXISTS', migrationsKey, sessionId .. ':' .. inc) == 1 then
    owned = 1
  else
    local state = call('HMGET', recordPrefix .. sessionId, 's', 'i')
    if not state[1] then
      -- A quiet record (includes/quiet.lua) is ACTIVE; read as it is (this script writes nothing).
      local packed = call('HGET', quietKey, sessionId)
      if packed then state = { 'A', quietHeartbeatState(packed) } end
    end
    if (state[1] == 'A' or state[1] == 'D') and tonumber(state[2]) == tonumber(inc) then owned = 1 end
  end
  out[#out + 1] = owned
end
return out
