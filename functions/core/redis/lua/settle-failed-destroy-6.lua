--[[
  settleFailedDestroy: an operator's answer to a destroy that gave up its GPU release (release_failed, after the release
  budget). 'retry' restarts the budget and hands the destroy back to the stall watchdog at once, which requests a new
  release attempt. 'resolve' says the memory is free (or written off): the release is booked with 0 confirmed bytes
  (counted as resolved in the ledger; a demoted session's offloaded bytes are written off with it) and the watchdog finishes the destroy (state purged, session.destroyed).

  KEYS[1] session record   KEYS[2] bucket destroy watchdog (ZSET)   KEYS[3] bucket failed destroys (ZSET)
  KEYS[4] bucket GPU ledger   KEYS[5] bucket placements
  KEYS[6] bucket quiet hash (includes/quiet.lua): the record while it is quiet
  ARGV[1] session id   ARGV[2] action: 'retry' | 'resolve'   ARGV[3] now (ms)

  Returns one of:
    {'RETRYING', incarnation}
    {'RESOLVED', incarnation, node, bytes}
    {'NOT_FAILED', state}   the session's destroy did not give up (state: A, D, X)
    {'UNKNOWN'}
]]
-- @include "session"
-- @include "quiet"
local sessionKey, destroyingKey, failedKey, ledgerKey, placementsKey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
materialize(sessionKey, KEYS[6]) -- a quiet record (includes/quiet.lua) becomes a hash of its own first
local sessionId, action, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
if action ~= 'retry' and action ~= 'resolve' then return redis.error_reply('ERR unknown action ' .. action) end

local state = redis.call('HMGET', sessionKey, 's', 'i', 'rf', 'ga', 'p', 'g', 'st')
if not state[1] then
  redis.call('ZREM', failedKey, sessionId)
  return { 'UNKNOWN' }
end
-- Only a destroy still waiting for its release: one whose late answer was booked meanwhile has moved on.
if state[1] ~= 'D' or not state[3] or state[7] ~= 'gpu_release_requested' then
  redis.call('ZREM', failedKey, sessionId)
  return { 'NOT_FAILED', state[1] }
end
local inc = tonumber(state[2])
redis.call('HDEL', sessionKey, 'rf')
redis.call('ZREM', failedKey, sessionId)
-- Score 0: the watchdog finds it stalled at its next pass.
redis.call('ZADD', destroyingKey, 0, sessionId)
if action == 'retry' then
  redis.call('HSET', sessionKey, 'gb', state[4] or '0')
  return { 'RETRYING', inc }
end
local node = placementOf(placementsKey, state[5])
local bytes = tonumber(state[6] or '0')
ledgerRelease(ledgerKey, node, bytes, 0)
-- Written off with the allocation: what a demote kept off the GPU is no longer counted as offloaded either.
dropOffloaded(sessionKey, ledgerKey, node)
redis.call('HINCRBY', ledgerKey, 'resolved:' .. node, 1)
redis.call('HSET', sessionKey, 'st', 'gpu_released', 'gr', 0)
appendTimeline(sessionKey, 'gpu_released', now)
return { 'RESOLVED', inc, node, bytes }
