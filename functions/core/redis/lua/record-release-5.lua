--[[
  recordRelease: a gpu.released — the runtime confirmed it freed an incarnation's GPU memory. Books the allocation
  as released in the ledger exactly once; a duplicate, or a release for an incarnation that holds nothing here,
  changes nothing but the 'ignored' counter.

  KEYS[1] session record   KEYS[2] bucket destroy watchdog (ZSET)   KEYS[3] bucket GPU ledger
  KEYS[4] bucket migrations   KEYS[5] bucket placements
  ARGV[1] session id   ARGV[2] incarnation   ARGV[3] bytes the runtime confirmed freed   ARGV[4] now (ms)
  ARGV[5] node named by the event (used only to count ignored releases when the allocation is unknown)

  Returns one of:
    {'RELEASED', node, registeredBytes}             a destroy's allocation; the destroy is now at gpu_released
    {'MIGRATION_RELEASED', node, registeredBytes}   the allocation a migration left behind
    {'DUPLICATE', stage}                            booked already
    {'STALE', currentIncarnation}                   no allocation of that incarnation is held
    {'NOT_DESTROYING'}                              the incarnation is live: a release nobody asked for is ignored
    {'UNKNOWN'}
]]
-- @include "session"
local sessionKey, destroyingKey, ledgerKey, migrationsKey, placementsKey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local sessionId, inc, confirmed, now, eventNode = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]

local function ignored(node) redis.call('HINCRBY', ledgerKey, 'ignored:' .. node, 1) end

local migration = redis.call('HGET', migrationsKey, sessionId .. ':' .. inc)
if migration then
  local sep = string.find(migration, '|', 1, true)
  local pid, bytes = string.sub(migration, 1, sep - 1), tonumber(string.sub(migration, sep + 1))
  local node = placementOf(placementsKey, pid)
  ledgerRelease(ledgerKey, node, bytes, confirmed)
  redis.call('HDEL', migrationsKey, sessionId .. ':' .. inc)
  redis.call('ZREM', destroyingKey, 'm:' .. sessionId .. ':' .. inc)
  return { 'MIGRATION_RELEASED', node, bytes }
end

local state = redis.call('HMGET', sessionKey, 's', 'i', 'st', 'p', 'g')
if not state[1] then ignored(eventNode) return { 'UNKNOWN' } end
if tonumber(state[2]) ~= inc then ignored(eventNode) return { 'STALE', tonumber(state[2]) } end
if state[1] == 'A' then ignored(eventNode) return { 'NOT_DESTROYING' } end
local node = placementOf(placementsKey, state[4])
if state[1] == 'X' or STAGE_ORDER[state[3]] >= STAGE_ORDER.gpu_released then
  ignored(node)
  return { 'DUPLICATE', state[3] }
end
local bytes = tonumber(state[5] or '0')
ledgerRelease(ledgerKey, node, bytes, confirmed)
redis.call('HSET', sessionKey, 'st', 'gpu_released', 'gr', confirmed)
appendTimeline(sessionKey, 'gpu_released', now)
redis.call('ZADD', destroyingKey, now, sessionId)
return { 'RELEASED', node, bytes }
