--[[
  purgeSession: after the GPU memory is released, drops the session's working state (activity context, placement,
  liveness, dedup ring) and checkpoints state_purged. What remains is what the tombstone needs (its tenant too, so a
  late event of the owner is told apart from another tenant's).

  KEYS[1] session record   KEYS[2] activity context   KEYS[3] bucket destroy watchdog (ZSET)
  KEYS[4] bucket quiet hash (includes/quiet.lua): the record while it is quiet
  ARGV[1] session id   ARGV[2] incarnation   ARGV[3] now (ms)

  Returns one of:
    {'PURGED'}
    {'ALREADY', stage}
    {'NOT_READY', stage}   the GPU release is not confirmed yet: state is never purged before it
    {'STALE', incarnation}
    {'NOT_DESTROYING', state}
    {'UNKNOWN'}
]]
-- @include "session"
-- @include "quiet"
local sessionKey, contextKey, destroyingKey = KEYS[1], KEYS[2], KEYS[3]
materialize(sessionKey, KEYS[4]) -- a quiet record (includes/quiet.lua) becomes a hash of its own first
local sessionId, inc, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

local state = redis.call('HMGET', sessionKey, 's', 'i', 'st')
if not state[1] then return { 'UNKNOWN' } end
if tonumber(state[2]) ~= inc then return { 'STALE', tonumber(state[2]) } end
if state[1] == 'X' then return { 'ALREADY', 'completed' } end
if state[1] ~= 'D' then return { 'NOT_DESTROYING', state[1] } end
local current = STAGE_ORDER[state[3]]
if current >= STAGE_ORDER.state_purged then return { 'ALREADY', state[3] } end
if current < STAGE_ORDER.gpu_released then return { 'NOT_READY', state[3] } end
redis.call('DEL', contextKey)
-- The offload stage goes with the state (a tombstone is not 'demoted'); `dc`, the demotes it had, stays as history.
redis.call('HDEL', sessionKey, 'w', 'h', 'r', 'm', 'dm', 'dk', 'dq', 'dg', 'dx')
redis.call('HSET', sessionKey, 'st', 'state_purged')
appendTimeline(sessionKey, 'state_purged', now)
redis.call('ZADD', destroyingKey, now, sessionId)
return { 'PURGED' }
