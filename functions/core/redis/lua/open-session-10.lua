--[[
  openSession: a session.opened — creates an incarnation, refreshes a live one, or moves it to a new placement.

  KEYS[1] session record            KEYS[2] bucket deadline index (ZSET)   KEYS[3] bucket meta (counters)
  KEYS[4] bucket placements         KEYS[5] bucket GPU ledger               KEYS[6] bucket migrations
  KEYS[7] bucket destroy watchdog (ZSET; a pending migration release is tracked there as '!m:<id>:<incarnation>')
  KEYS[8] the session's end marker (HASH, expires): an end the Broker delivered before this open
  KEYS[9] bucket watch (HASH): `bs`, since when the fleet's heartbeats are unheard (includes/blind.lua)
  KEYS[10] bucket quiet hash (includes/quiet.lua): the record while it is quiet
  ARGV[1] session id   ARGV[2] event fingerprint   ARGV[3] now (ms)   ARGV[4] live-from (ms; event time, capped at now)
  ARGV[5] liveness window (ms)   ARGV[6] node   ARGV[7] runtime URL   ARGV[8] GPU bytes   ARGV[9] tenant ('' = none;
  a live session's tenant must match)   ARGV[10] model   ARGV[11] release token for the old allocation, should
  this opened move the session (drawn by the caller; the release is booked only with it)
  ARGV[12] engine address: where the session lives inside its runtime, `<slot>/<engineSessionId>` (either part may be
  empty; '' = none), kept as the record's `ea` for the release; a live session opened again at another address on
  the same runtime has moved (its old slot still holds the old KV): that is a migration like a new placement
  ARGV[13] '1': a live record that holds only what an open writes is left quiet, packed in the bucket's quiet hash
  (includes/quiet.lua); anything else ('' or absent): it is left a hash of its own, as replicas before quiet records
  wrote it (SESSION_RECORD_PACKING, off while a fleet is upgraded from them)

  Returns one of:
    {'OPENED', incarnation, deadline, 0, endedBy}           a new session
    {'REOPENED', incarnation, deadline, previousIncarnation, endedBy}
                                                            an id opened again after its destruction
                                   endedBy: '' , or the cause of an end sent after this open but delivered before it
                                   (its marker, same tenant): the new session is due at once, and the deadline engine
                                   claims it under that cause
    {'REFRESHED', incarnation, deadline}                    a live session, same placement
    {'MIGRATED', incarnation, deadline, oldIncarnation, oldNode, oldRuntimeUrl, oldBytes}
                                                            placement changed: a new incarnation; the old
                                                            allocation awaits release (migrations hash)
    {'DUPLICATE', incarnation}     this very event was applied already
    {'STALE', incarnation}         older than the destruction of the last incarnation (never revives it), or
                                   older than the opened that set the live placement (never moves it back)
    {'BUSY', incarnation}          the previous incarnation is still being destroyed: retry later
    {'NOT_OWNER', incarnation}     the live session belongs to another tenant: nothing changes (no refresh, no move)
]]
-- @include "session"
-- @include "quiet"
local sessionKey, deadlinesKey, metaKey, placementsKey, ledgerKey, migrationsKey, destroyingKey, markerKey, watchKey =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local sessionId, fingerprint, now, liveFrom = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local window, node, url, bytes, tenant, model = tonumber(ARGV[5]), ARGV[6], ARGV[7], tonumber(ARGV[8]), ARGV[9], ARGV[10]
local migrationToken = ARGV[11]
local engineAddress = ARGV[12] or ''
local packing = ARGV[13] == '1'

local function create(previous)
  local inc = nextIncarnation(metaKey)
  local pid = placementId(placementsKey, metaKey, node, url)
  placementRef(placementsKey, pid, 1)
  local deadline = liveFrom + window
  redis.call('DEL', sessionKey)
  redis.call('HSET', sessionKey, 's', 'A', 'i', inc, 'w', window, 'p', pid, 'g', bytes, 'od', openedOffset(liveFrom, inc), 'f', fingerprint)
  if engineAddress ~= '' then redis.call('HSET', sessionKey, 'ea', engineAddress) end
  if tenant ~= '' then redis.call('HSET', sessionKey, 'tn', tenant) end
  if model ~= '' then redis.call('HSET', sessionKey, 'm', model) end
  -- An end sent after this open, by its tenant, already arrived: the session is registered (its memory is held and
  -- must be released) and due now, under that end's cause. An end sent before this open ended an older incarnation.
  local endedBy = ''
  local cause, at = endOfOpen(markerKey, tenant, liveFrom)
  if cause then
    -- Due at once; while the fleet is unheard the engine claims only what fell due before that began, so such an
    -- end is indexed there, not made to wait for heartbeats it does not need.
    endedBy, deadline = cause, math.min(now, tonumber(redis.call('HGET', watchKey, 'bs')) or now)
    redis.call('HSET', sessionKey, 'pc', cause, 'pt', string.format('%d', at))
  end
  redis.call('ZADD', deadlinesKey, deadline, sessionId)
  ledgerRegister(ledgerKey, node, bytes)
  if previous then
    -- Remember when the id was reopened: an end trigger sent before it names the previous incarnation.
    redis.call('HSET', sessionKey, 'ro', liveFrom)
    return { 'REOPENED', inc, deadline, previous, endedBy }
  end
  return { 'OPENED', inc, deadline, 0, endedBy }
end

local function apply()
local state = redis.call('HMGET', sessionKey, 's', 'i', 'f', 'ca', 'p', 'g', 'o', 'tn', 'ea', 'od')
local s, inc, f = state[1], state[2], state[3]
if not s then return create(nil) end
if s == 'A' and not owns(state[8], tenant) then return { 'NOT_OWNER', tonumber(inc) } end
if f == fingerprint then return { 'DUPLICATE', tonumber(inc) } end
if s == 'D' then return { 'BUSY', tonumber(inc) } end
if s == 'X' then
  if liveFrom <= tonumber(state[4] or '0') then return { 'STALE', tonumber(inc) } end
  return create(tonumber(inc))
end

-- A live session: refresh its liveness; a new placement means the session migrated. An open older than the one that
-- set the placement never moves it back (and interns nothing).
local known = redis.call('HGET', placementsKey, 'key:' .. node .. '\n' .. url)
local oldAddress = state[9] or ''
if (known ~= state[5] or engineAddress ~= oldAddress) and liveFrom < openedFrom(state[7], state[10], inc) then return { 'STALE', tonumber(inc) } end
local pid = known or placementId(placementsKey, metaKey, node, url)
redis.call('HSET', sessionKey, 'w', window)
if model ~= '' then redis.call('HSET', sessionKey, 'm', model) end
redis.call('ZADD', deadlinesKey, 'GT', liveFrom + window, sessionId)
local deadline = tonumber(redis.call('ZSCORE', deadlinesKey, sessionId))
if pid == state[5] and engineAddress == oldAddress then
  redis.call('HSET', sessionKey, 'f', fingerprint)
  return { 'REFRESHED', tonumber(inc), deadline }
end

local oldInc, oldPid, oldBytes = tonumber(inc), state[5], tonumber(state[6] or '0')
local newInc = nextIncarnation(metaKey)
-- The new incarnation names the new placement; the old one stays named by the migration entry until its release.
placementRef(placementsKey, pid, 1)
redis.call('HSET', migrationsKey, sessionId .. ':' .. oldInc, oldPid .. '|' .. oldBytes .. '|' .. migrationToken .. (oldAddress ~= '' and ('|' .. oldAddress) or ''))
redis.call('ZADD', destroyingKey, now, MIGRATION_MEMBER_PREFIX .. sessionId .. ':' .. oldInc)
redis.call('HSET', sessionKey, 'i', newInc, 'p', pid, 'g', bytes, 'f', fingerprint, 'od', openedOffset(liveFrom, newInc))
redis.call('HDEL', sessionKey, 'o')
if engineAddress ~= '' then redis.call('HSET', sessionKey, 'ea', engineAddress) else redis.call('HDEL', sessionKey, 'ea') end
ledgerRegister(ledgerKey, node, bytes)
local oldNode, oldUrl = placementOf(placementsKey, oldPid)
-- The new incarnation starts resident. KV the old one kept off the GPU (a demote) is dropped by the migration's
-- release of the old allocation; the ledger stops counting it as offloaded here, with the incarnation that kept it.
dropOffloaded(sessionKey, ledgerKey, oldNode)
redis.call('HDEL', sessionKey, 'dm', 'dk', 'dq', 'dg', 'dx', 'dc')
return { 'MIGRATED', newInc, deadline, oldInc, oldNode, oldUrl, oldBytes }
end

-- A quiet record is opened out to a hash of its own, changed as any record, and packed again if it still can be.
materialize(sessionKey, KEYS[10])
local result = apply()
if packing then
  local flat, fields = redis.call('HGETALL', sessionKey), {}
  for j = 1, #flat, 2 do fields[flat[j]] = flat[j + 1] end
  local packed = packQuiet(fields)
  if packed then
    redis.call('HSET', KEYS[10], recordIdOf(sessionKey), packed)
    redis.call('DEL', sessionKey)
  end
end
return result
