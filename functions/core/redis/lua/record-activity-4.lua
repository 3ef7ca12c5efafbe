--[[
  recordActivity: a session.activity or inference.completed scored by activity-score — refreshes liveness like a
  heartbeat and stores the new scoring context, but only if the context is still the version the score was
  computed from (compare-and-set: a concurrent replica's update is never overwritten; the caller recomputes).

  KEYS[1] session record   KEYS[2] bucket deadline index (ZSET)   KEYS[3] activity context (HASH)
  KEYS[4] bucket quiet hash (includes/quiet.lua): the record while it is quiet
  ARGV[1] session id   ARGV[2] event fingerprint   ARGV[3] live-from (ms)   ARGV[4] expected context version ('0' = none yet)
  ARGV[5] last activity at (ms; stored as context field 'la')   ARGV[6] the tenant the event names ('' for none): a
  session of another tenant is not touched   ARGV[7..] context field/value pairs to store

  Returns one of:
    {'APPLIED', incarnation, deadline, holdUntil, newVersion, offloadStage}
    {'CONFLICT', incarnation, currentVersion}   the context changed since it was read: recompute and retry
    {'DUPLICATE', incarnation, offloadStage}
  offloadStage: the session's `dm` (demoting, demoted, restoring), '' when its KV is on the GPU: user activity on an
  offloaded session asks for its restore (request-restore-2.lua).
    {'UNKNOWN'}
    {'ENDED', incarnation, state}
    {'NOT_OWNER', incarnation}
]]
-- @include "session"
-- @include "quiet"
local sessionKey, deadlinesKey, contextKey = KEYS[1], KEYS[2], KEYS[3]
materialize(sessionKey, KEYS[4]) -- a quiet record (includes/quiet.lua) becomes a hash of its own first
local sessionId, fingerprint, liveFrom, expected, lastActivity = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]

local state = redis.call('HMGET', sessionKey, 's', 'i', 'w', 'h', 'tn', 'pc', 'dm')
if not state[1] then return { 'UNKNOWN' } end
local inc = tonumber(state[2])
if not owns(state[5], ARGV[6]) then return { 'NOT_OWNER', inc } end
if state[1] ~= 'A' then return { 'ENDED', inc, state[1] } end
-- Its end arrived before its open: due now, never pushed back (includes/session.lua, pc).
if state[6] then return { 'ENDED', inc, 'D' } end
if seen(sessionKey, fingerprint) then return { 'DUPLICATE', inc, state[7] or '' } end
local version = redis.call('HGET', contextKey, 'v') or '0'
if version ~= expected then return { 'CONFLICT', inc, tonumber(version) } end

local fields = { 'v', tostring(tonumber(version) + 1), 'la', lastActivity }
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', contextKey, unpack(fields))
redis.call('ZADD', deadlinesKey, 'GT', liveFrom + tonumber(state[3]), sessionId)
remember(sessionKey, fingerprint)
return { 'APPLIED', inc, tonumber(redis.call('ZSCORE', deadlinesKey, sessionId)), tonumber(state[4] or '0'), tonumber(version) + 1, state[7] or '' }
