--[[
  recordRelease: a gpu.released — the runtime confirmed it freed an incarnation's GPU memory. Books the allocation
  as released in the ledger exactly once, and only as the answer to a release that was requested: the destroy is at
  gpu_release_requested (or the migration's release is pending) and the event echoes that request's token. A
  duplicate, a stale or forged answer, or one for an incarnation that holds nothing here changes nothing but the
  'ignored' counter.

  KEYS[1] session record   KEYS[2] bucket destroy watchdog (ZSET)   KEYS[3] bucket GPU ledger
  KEYS[4] bucket migrations   KEYS[5] bucket placements   KEYS[6] bucket failed destroys (ZSET)
  KEYS[7] bucket quiet hash (includes/quiet.lua): the record while it is quiet
  ARGV[1] session id   ARGV[2] incarnation   ARGV[3] bytes the runtime confirmed freed   ARGV[4] now (ms)
  ARGV[5] node named by the event (used only to count ignored releases when the allocation is unknown)
  ARGV[6] the release token the event echoes
  ARGV[7] '1' when the freed figure is an estimate (gpu.released `estimated`): also counted under estimated:<node>
          and estimatedBytes:<node>
  A demoted session's offloaded bytes (`ob`) leave offloaded:<node> with its release: the runtime drops that copy.

  Returns one of:
    {'RELEASED', node, registeredBytes}             a destroy's allocation; the destroy is now at gpu_released
    {'MIGRATION_RELEASED', node, registeredBytes}   the allocation a migration left behind
    {'DUPLICATE', stage}                            booked already (same token)
    {'STALE', currentIncarnation}                   no allocation of that incarnation is held
    {'NOT_DESTROYING'}                              the incarnation is live: a release nobody asked for is ignored
    {'NOT_REQUESTED', stage}                        destroying, but no release was requested yet
    {'TOKEN_MISMATCH'}                              not the answer to the release requested (a forged, or an older
                                                    attempt's): ignored
    {'UNKNOWN'}
]]
-- @include "session"
-- @include "quiet"
local sessionKey, destroyingKey, ledgerKey, migrationsKey, placementsKey, failedKey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
materialize(sessionKey, KEYS[7]) -- a quiet record (includes/quiet.lua) becomes a hash of its own first
local sessionId, inc, confirmed, now, eventNode, token = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], ARGV[6] or ''
local estimated = ARGV[7] == '1'

local function ignored(node) redis.call('HINCRBY', ledgerKey, 'ignored:' .. node, 1) end

local standing, state, matches = releaseStanding(sessionKey, migrationsKey, sessionId, inc, token)
if standing == 'migration' then
  local node = placementOf(placementsKey, state.pid)
  if not matches then ignored(node) return { 'TOKEN_MISMATCH' } end
  ledgerRelease(ledgerKey, node, state.bytes, confirmed, estimated)
  redis.call('HDEL', migrationsKey, sessionId .. ':' .. inc)
  placementRef(placementsKey, state.pid, -1)
  redis.call('ZREM', destroyingKey, MIGRATION_MEMBER_PREFIX .. sessionId .. ':' .. inc)
  return { 'MIGRATION_RELEASED', node, state.bytes }
end
if standing == 'unknown' then ignored(eventNode) return { 'UNKNOWN' } end
if standing == 'stale' then ignored(eventNode) return { 'STALE', tonumber(state[2]) } end
if standing == 'live' then ignored(eventNode) return { 'NOT_DESTROYING' } end
local node = placementOf(placementsKey, state[4])
if standing ~= 'pending' or not matches then
  ignored(node)
  if standing == 'released' and matches then return { 'DUPLICATE', state[3] } end
  if standing == 'not_requested' then return { 'NOT_REQUESTED', state[3] } end
  return { 'TOKEN_MISMATCH' }
end
local bytes = tonumber(state[5] or '0')
ledgerRelease(ledgerKey, node, bytes, confirmed, estimated)
-- A demoted session's KV was kept off the GPU (settle-offload-call-5.lua): its release ends that copy's account too.
dropOffloaded(sessionKey, ledgerKey, node)
redis.call('HSET', sessionKey, 'st', 'gpu_released', 'gr', confirmed)
-- The answer to the last attempt may come after the destroy gave up (the Broker kept redelivering it): it is then no
-- longer waiting for an operator.
redis.call('HDEL', sessionKey, 'rf')
redis.call('ZREM', failedKey, sessionId)
appendTimeline(sessionKey, 'gpu_released', now)
redis.call('ZADD', destroyingKey, now, sessionId)
return { 'RELEASED', node, bytes }
