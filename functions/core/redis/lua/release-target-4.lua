--[[
  releaseTarget: what gpu-release may call for a gpu.release.requested (read only). The runtime to call is the one
  the session (or the migration's old allocation) was opened with, as stored here, never one an event names, and
  only while that release is pending under the token the event carries: a forged or stale request calls nothing.

  KEYS[1] session record   KEYS[2] bucket migrations   KEYS[3] bucket placements
  KEYS[4] bucket quiet hash (includes/quiet.lua): the record while it is quiet
  ARGV[1] session id   ARGV[2] incarnation   ARGV[3] the release token the request carries

  Returns one of:
    {'PENDING', 'destroy', node, runtimeUrl, attempt}   the destroy waits for this very release attempt
    {'PENDING', 'migration', node, runtimeUrl, 0}       the allocation a migration left behind waits for it
    {'NOT_PENDING', why}   nothing to call: 'unknown' (no such session), 'stale' (another incarnation), 'live' (not
                           being destroyed), 'not_requested' (no release requested yet), 'released' (booked already),
                           'token_mismatch' (a release is pending, but not this one)
]]
-- @include "session"
-- @include "quiet"
local sessionKey, migrationsKey, placementsKey = KEYS[1], KEYS[2], KEYS[3]
materialize(sessionKey, KEYS[4]) -- a quiet record (includes/quiet.lua) becomes a hash of its own first
local sessionId, inc, token = ARGV[1], tonumber(ARGV[2]), ARGV[3]

local standing, state, matches = releaseStanding(sessionKey, migrationsKey, sessionId, inc, token)
if standing == 'migration' then
  if not matches then return { 'NOT_PENDING', 'token_mismatch' } end
  local node, url = placementOf(placementsKey, state.pid)
  return { 'PENDING', 'migration', node, url, 0 }
end
if standing ~= 'pending' then return { 'NOT_PENDING', standing } end
if not matches then return { 'NOT_PENDING', 'token_mismatch' } end
local node, url = placementOf(placementsKey, state[4])
return { 'PENDING', 'destroy', node, url, tonumber(state[6] or '0') }
