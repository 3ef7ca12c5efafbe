--[[
  grantHold: a session.hold — the session is busy (a long tool call, a paused stream) and must not be reclaimed
  for silence or idleness before the hold ends. Timed from receipt; a longer hold never shortens an earlier one.

  KEYS[1] session record   KEYS[2] bucket deadline index (ZSET)
  KEYS[3] bucket quiet hash (includes/quiet.lua): the record while it is quiet
  ARGV[1] session id   ARGV[2] event fingerprint   ARGV[3] now (ms)   ARGV[4] duration (ms, already capped)
  ARGV[5] the tenant the event names ('' for none): a session of another tenant is not held

  Returns one of:
    {'HELD', incarnation, holdUntil, deadline}
    {'DUPLICATE', incarnation}
    {'UNKNOWN'}
    {'ENDED', incarnation, state}
    {'NOT_OWNER', incarnation}
]]
-- @include "session"
-- @include "quiet"
local sessionKey, deadlinesKey = KEYS[1], KEYS[2]
materialize(sessionKey, KEYS[3]) -- a quiet record (includes/quiet.lua) becomes a hash of its own first
local sessionId, fingerprint, now, duration = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])

local state = redis.call('HMGET', sessionKey, 's', 'i', 'h', 'tn', 'pc')
if not state[1] then return { 'UNKNOWN' } end
local inc = tonumber(state[2])
if not owns(state[4], ARGV[5] or '') then return { 'NOT_OWNER', inc } end
if state[1] ~= 'A' then return { 'ENDED', inc, state[1] } end
-- Its end arrived before its open: due now, never pushed back (includes/session.lua, pc).
if state[5] then return { 'ENDED', inc, 'D' } end
if seen(sessionKey, fingerprint) then return { 'DUPLICATE', inc } end
local holdUntil = math.max(tonumber(state[3] or '0'), now + duration)
redis.call('HSET', sessionKey, 'h', holdUntil)
redis.call('ZADD', deadlinesKey, 'GT', holdUntil, sessionId)
remember(sessionKey, fingerprint)
return { 'HELD', inc, holdUntil, tonumber(redis.call('ZSCORE', deadlinesKey, sessionId)) }
