--[[
  claimDestroy: the first trigger of an incarnation's end wins (closed, idle, completed, forced); any later one is
  recorded as an extra cause and never starts a second destroy.

  KEYS[1] session record   KEYS[2] bucket deadline index (ZSET)   KEYS[3] bucket destroy watchdog (ZSET)
  KEYS[4] activity context (HASH)   KEYS[5] end marker (HASH, expires): left by an end that finds no session to end
  KEYS[6] bucket placements (HASH): a destroy to go on with is answered its placement, so the caller needs no further
          round trip before it asks for the GPU release
  KEYS[7] bucket quiet hash (includes/quiet.lua): the record while it is quiet
  ARGV[1] session id   ARGV[2] event fingerprint ('' = none)   ARGV[3] expected incarnation ('' = the current one)
  ARGV[4] cause   ARGV[5] now (ms)
  ARGV[6] '1' for the stall watchdog's resume of a destroy (destroy.resume: it claims again under the destroy's own
          cause, naming no idle verdict), else ''
  ARGV[7] when the trigger was sent (ms; its CloudEvent time, '' = unknown): a trigger that names no incarnation and
          was sent before this id was reopened ends the previous incarnation, never this one
  ARGV[8] ownership check: '' for none (our own triggers, an operator's), else 't:' and the tenant the event names
          (possibly empty): a session of another tenant is refused
  ARGV[9] when the cause was triggered (ms, by event time; '' = now): a trigger sent before the one that claimed the
          destroy takes its place as the cause, the claimant's becomes an extra cause
  ARGV[10] end-marker TTL (ms; '' = leave none): for the pipeline's ends (closed, completed). One that finds no session,
          or only the tombstone of an incarnation ended before it was sent, leaves a marker, so the open that the
          Broker delivers after it (sent earlier) is ended at once instead of living until its deadline
  ARGV[11] for cause 'idle': the session.idle's event id, which must be one of the verdicts the idle checker recorded
          in the activity context (field 'iv', record-idle-verdict-3.lua). The verdict's time is the one recorded with
          it, never the event's: the claim is refused (REVIVED) if the session was active after it, holds an unexpired
          hold, or held one that ended after it, because the verdict was reached on older facts; and it is the cause's
          time. An idle trigger with no recorded verdict is UNVERIFIED and changes nothing, unless it is the resume
          of an idle destroy (ARGV[6]), which goes on with it (ALREADY). A recorded verdict outdated by activity or a
          hold since neither claims (REVIVED) nor becomes the cause, or an extra cause, of a destroy in progress

  Returns one of:
    {'CLAIMED', incarnation, stage, cause, placementId, attempt, token, gaveUp, gpuBytes, placement}
    {'ALREADY', incarnation, stage, cause, placementId, attempt, token, gaveUp, gpuBytes, placement}    already destroying: resume at its checkpoint
    {'DUPLICATE', incarnation, stage, cause, placementId, attempt, token, gaveUp, gpuBytes, placement}  this very event was applied already
                               (attempt and token: the GPU release attempt recorded so far, 0 and '' before any;
                               gaveUp: 1 when the destroy gave up its release (release_failed), else 0; gpuBytes: the
                               record's `g`, '0' when none; placement: the interned JSON [node, runtimeUrl] of
                               placementId, '' when none)
    {'NOT_OWNER', incarnation} the session belongs to another tenant: nothing changes
    {'STALE', incarnation}     the trigger names (or was sent before) an older incarnation: never touches the newer one
    {'REVIVED', incarnation}   idle verdict outdated (activity since, or an active hold)
    {'UNVERIFIED', incarnation} a session.idle the idle checker did not record (forged, or from a checker older than
                               the recording): nothing changes
    {'ENDED', incarnation}     destroyed already (tombstone)
    {'MARKED'}                 no session to end yet: the end waits in its marker for the open
    {'UNKNOWN'}
]]
-- @include "session"
-- @include "idle-verdicts"
-- @include "quiet"
local sessionKey, deadlinesKey, destroyingKey, contextKey, markerKey, placementsKey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
materialize(sessionKey, KEYS[7]) -- a quiet record (includes/quiet.lua) becomes a hash of its own first
local sessionId, fingerprint, expectedInc, cause, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local sentAt, ownerCheck, markerTtl = ARGV[7] or '', ARGV[8] or '', tonumber(ARGV[10] or '')
local causeAt = tonumber(ARGV[9] or '') or now

-- An idle verdict counts only as the idle checker recorded it: its id among the last few recorded for the session,
-- at the time recorded with it, not the event's (a recorded verdict replayed with a fresh time must not pass the
-- activity check below, nor take over a cause). A time that is not one (only a hand-written field could hold it)
-- verifies nothing.
local verdictAt
if cause == 'idle' and (ARGV[11] or '') ~= '' then
  for _, recorded in ipairs(readIdleVerdicts(contextKey)) do
    if recorded.id == ARGV[11] then verdictAt = verdictTime(recorded.at) or verdictAt end
  end
  if verdictAt then causeAt = verdictAt end
end
local resuming = ARGV[6] == '1'
local unverified = cause == 'idle' and not verdictAt
-- Whether an idle verdict was reached on facts older than the session's: activity since, or a hold that ended after
-- it or has not ended (quiet is timed from a hold's end).
local function outdated(heldUntil)
  local lastActivity = tonumber(redis.call('HGET', contextKey, 'la') or '0')
  return lastActivity > verdictAt or heldUntil > verdictAt or heldUntil > now
end

-- Only an end that says when it was sent, for the tenant it names, may wait for an open.
local function leaveMarker()
  if not markerTtl or sentAt == '' or expectedInc ~= '' then return false end
  markEnd(markerKey, cause, tonumber(sentAt), string.sub(ownerCheck, 3), markerTtl)
  return true
end

local state = redis.call('HMGET', sessionKey, 's', 'i', 'st', 'c', 'p', 'h', 'xc', 'ro', 'tn', 'ga', 'gt', 'ca', 'ct', 'rf', 'pe', 'g')

-- What a destroy to go on with needs besides its checkpoint: its GPU bytes and where it is placed.
local function placed()
  local placement = state[5] and redis.call('HGET', placementsKey, 'id:' .. state[5]) or ''
  return state[16] or '0', placement or ''
end
if not state[1] then
  if leaveMarker() then return { 'MARKED' } end
  return { 'UNKNOWN' }
end
local s, inc = state[1], tonumber(state[2])
if ownerCheck ~= '' and not owns(state[9], string.sub(ownerCheck, 3)) then return { 'NOT_OWNER', inc } end
local attempt, token = tonumber(state[10] or '0'), state[11] or ''
if expectedInc ~= '' and tonumber(expectedInc) ~= inc then return { 'STALE', inc } end
if sentAt ~= '' and state[8] and tonumber(sentAt) < tonumber(state[8]) then return { 'STALE', inc } end
if s == 'X' then
  -- Sent after this incarnation's destroy was claimed (and not the end that claimed it, nor a copy of it): it ends an
  -- incarnation whose open has not arrived yet (or is a late end of this one, whose marker no later open is sent
  -- before).
  if tonumber(sentAt) and tonumber(sentAt) > tonumber(state[12] or '0') and tonumber(sentAt) > tonumber(state[13] or '0') then leaveMarker() end
  return { 'ENDED', inc }
end
local gaveUp = state[14] and 1 or 0
if seen(sessionKey, fingerprint) then
  local gpuBytes, placement = placed()
  return { 'DUPLICATE', inc, state[3] or '', state[4] or '', state[5] or '', attempt, token, gaveUp, gpuBytes, placement }
end
-- Before anything is written: an unrecorded verdict changes nothing, except as the resume of an idle destroy. Once
-- the destroy has purged the session's working state, the verdicts went with the activity context (and the seen
-- events with the record's ring), so a redelivered genuine verdict can no longer be told from another: it answers
-- ALREADY there, changing nothing either, rather than be reported as unrecorded.
local purged = state[3] == 'state_purged' or state[3] == 'completed'
if unverified and not (s == 'D' and (resuming or purged)) then return { 'UNVERIFIED', inc } end

if s == 'D' then
  local current, extra, displaced = state[4], state[7] or '', cause
  -- The engine's session.expired for a claim it made under an end that arrived before the open: not a cause.
  local engineExpiry = cause == 'expired' and state[15] ~= false and state[15] ~= nil
  -- The cause is the earliest trigger by event time: one sent before the claimant's, delivered after it, takes its
  -- place (a close processed after the deadline it was sent before is a close, not an expiry).
  -- Nor does an idle verdict outdated since it was reached become a cause, however early its time (a resume is
  -- the destroy's own cause and changes none).
  local notACause = engineExpiry or unverified or (cause == 'idle' and outdated(tonumber(state[6] or '0')))
  if not notACause and cause ~= current and causeAt < tonumber(state[13] or causeAt) then
    redis.call('HSET', sessionKey, 'c', cause, 'ct', causeAt)
    displaced, current = current, cause
  end
  if not notACause and displaced ~= current and not string.find(',' .. extra .. ',', ',' .. displaced .. ',', 1, true) then
    local causes = {}
    for c in string.gmatch(extra, '[^,]+') do if c ~= current then causes[#causes + 1] = c end end
    causes[#causes + 1] = displaced
    redis.call('HSET', sessionKey, 'xc', table.concat(causes, ','))
  end
  -- Sent after this destroy was claimed, and not the end that claimed it: it may end the next incarnation, whose
  -- open waits (BUSY) for this destroy to finish.
  if tonumber(sentAt) and tonumber(sentAt) > tonumber(state[12] or '0') and tonumber(sentAt) ~= tonumber(state[13] or '0') then leaveMarker() end
  remember(sessionKey, fingerprint)
  local gpuBytes, placement = placed()
  return { 'ALREADY', inc, state[3], current, state[5] or '', attempt, token, gaveUp, gpuBytes, placement }
end

if cause == 'idle' and outdated(tonumber(state[6] or '0')) then return { 'REVIVED', inc } end
claim(sessionKey, deadlinesKey, destroyingKey, sessionId, cause, now, causeAt)
remember(sessionKey, fingerprint)
local gpuBytes, placement = placed()
return { 'CLAIMED', inc, 'claimed', cause, state[5] or '', 0, '', 0, gpuBytes, placement }
