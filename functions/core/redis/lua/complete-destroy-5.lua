--[[
  completeDestroy: the last stage. The record becomes a tombstone (state X) that expires after the tombstone TTL,
  so late events for this incarnation are recognised and ignored until then. The incarnation no longer names its
  placement (which is forgotten with the last allocation naming it).

  KEYS[1] session record   KEYS[2] bucket destroy watchdog (ZSET)   KEYS[3] bucket placements
  KEYS[4] bucket failed destroys (ZSET): a completed destroy is never left there
  KEYS[5] bucket quiet hash (includes/quiet.lua): the record while it is quiet
  ARGV[1] session id   ARGV[2] incarnation   ARGV[3] now (ms)   ARGV[4] tombstone TTL (ms)

  Returns one of:
    {'COMPLETED'}
    {'ALREADY'}
    {'NOT_READY', stage}   state is not purged yet
    {'STALE', incarnation}
    {'NOT_DESTROYING', state}
    {'UNKNOWN'}
]]
-- @include "session"
-- @include "quiet"
local sessionKey, destroyingKey, placementsKey, failedKey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
materialize(sessionKey, KEYS[5]) -- a quiet record (includes/quiet.lua) becomes a hash of its own first
local sessionId, inc, now, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])

local state = redis.call('HMGET', sessionKey, 's', 'i', 'st', 'p')
if not state[1] then return { 'UNKNOWN' } end
if tonumber(state[2]) ~= inc then return { 'STALE', tonumber(state[2]) } end
if state[1] == 'X' then return { 'ALREADY' } end
if state[1] ~= 'D' then return { 'NOT_DESTROYING', state[1] } end
if state[3] ~= 'state_purged' then return { 'NOT_READY', state[3] } end
redis.call('HSET', sessionKey, 's', 'X', 'st', 'completed', 't', now)
appendTimeline(sessionKey, 'completed', now)
redis.call('ZREM', destroyingKey, sessionId)
redis.call('ZREM', failedKey, sessionId)
redis.call('PEXPIRE', sessionKey, ttl)
placementRef(placementsKey, state[4], -1)
return { 'COMPLETED' }
