--[[
  claimDestroy: the first trigger of an incarnation's end wins (closed, idle, completed, forced); any later one is
  recorded as an extra cause and never starts a second destroy.

  KEYS[1] session record   KEYS[2] bucket deadline index (ZSET)   KEYS[3] bucket destroy watchdog (ZSET)
  KEYS[4] activity context (HASH)
  ARGV[1] session id   ARGV[2] event fingerprint ('' = none)   ARGV[3] expected incarnation ('' = the current one)
  ARGV[4] cause   ARGV[5] now (ms)
  ARGV[6] idle-since (ms; only for cause 'idle': the claim is refused if the session was active after it or holds
          an unexpired hold, because the idle verdict was reached on older facts)
  ARGV[7] when the trigger was sent (ms; its CloudEvent time, '' = unknown): a trigger that names no incarnation and
          was sent before this id was reopened ends the previous incarnation, never this one
  ARGV[8] ownership check: '' for none (our own triggers, an operator's), else 't:' and the tenant the event names
          (possibly empty): a session of another tenant is refused

  Returns one of:
    {'CLAIMED', incarnation, stage, cause, placementId, attempt, token}
    {'ALREADY', incarnation, stage, cause, placementId, attempt, token}    already destroying: resume at its checkpoint
    {'DUPLICATE', incarnation, stage, cause, placementId, attempt, token}  this very event was applied already
                               (attempt and token: the GPU release attempt recorded so far, 0 and '' before any)
    {'NOT_OWNER', incarnation} the session belongs to another tenant: nothing changes
    {'STALE', incarnation}     the trigger names (or was sent before) an older incarnation: never touches the newer one
    {'REVIVED', incarnation}   idle verdict outdated (activity since, or an active hold)
    {'ENDED', incarnation}     destroyed already (tombstone)
    {'UNKNOWN'}
]]
-- @include "session"
local sessionKey, deadlinesKey, destroyingKey, contextKey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local sessionId, fingerprint, expectedInc, cause, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])

local state = redis.call('HMGET', sessionKey, 's', 'i', 'st', 'c', 'p', 'h', 'xc', 'ro', 'tn', 'ga', 'gt')
if not state[1] then return { 'UNKNOWN' } end
local s, inc = state[1], tonumber(state[2])
local ownerCheck = ARGV[8] or ''
if ownerCheck ~= '' and not owns(state[9], string.sub(ownerCheck, 3)) then return { 'NOT_OWNER', inc } end
local attempt, token = tonumber(state[10] or '0'), state[11] or ''
if expectedInc ~= '' and tonumber(expectedInc) ~= inc then return { 'STALE', inc } end
local sentAt = ARGV[7] or ''
if sentAt ~= '' and state[8] and tonumber(sentAt) < tonumber(state[8]) then return { 'STALE', inc } end
if s == 'X' then return { 'ENDED', inc } end
if seen(sessionKey, fingerprint) then return { 'DUPLICATE', inc, state[3] or '', state[4] or '', state[5], attempt, token } end

if s == 'D' then
  local extra = state[7] or ''
  if cause ~= state[4] and not string.find(',' .. extra .. ',', ',' .. cause .. ',', 1, true) then
    redis.call('HSET', sessionKey, 'xc', extra == '' and cause or (extra .. ',' .. cause))
  end
  remember(sessionKey, fingerprint)
  return { 'ALREADY', inc, state[3], state[4], state[5], attempt, token }
end

if cause == 'idle' then
  local idleSince = tonumber(ARGV[6] or '0')
  local lastActivity = tonumber(redis.call('HGET', contextKey, 'la') or '0')
  if lastActivity > idleSince or tonumber(state[6] or '0') > now then return { 'REVIVED', inc } end
end
claim(sessionKey, deadlinesKey, destroyingKey, sessionId, cause, now)
remember(sessionKey, fingerprint)
return { 'CLAIMED', inc, 'claimed', cause, state[5], 0, '' }
