--[[
  advanceStage: checkpoints a destroy at its next stage (only forward), so a redelivered or interrupted destroy
  resumes where it stopped. Re-requesting the GPU release at the same stage with a higher attempt is allowed, up to
  the release budget: the attempt past it ends the destroy in release_failed instead (it leaves the watchdog and
  waits, in the bucket's failed set, for an operator to retry or resolve it).

  KEYS[1] session record   KEYS[2] bucket destroy watchdog (ZSET)   KEYS[3] bucket failed destroys (ZSET)
  KEYS[4] bucket quiet hash (includes/quiet.lua): the record while it is quiet
  ARGV[1] session id   ARGV[2] incarnation   ARGV[3] stage   ARGV[4] now (ms)   ARGV[5] GPU release attempt ('' = none)
  ARGV[6] token of that release attempt ('' with no attempt): drawn by the caller, stored as the record's 'gt'; the
          runtime's answer is booked only if it echoes it
  ARGV[7] release budget: attempts a destroy may make (counted from the record's 'gb', which an operator's retry
          moves on); '' = no limit

  Returns one of:
    {'ADVANCED', stage}
    {'REISSUED', attempt}       same stage, higher release attempt recorded
    {'EXHAUSTED', attempts}     that attempt is past the budget: the destroy gave up (release_failed), now
    {'GAVE_UP', attempts}       it had given up already
    {'ALREADY', currentStage}   at or past that stage already
    {'STALE', incarnation}      another incarnation
    {'NOT_DESTROYING', state}
    {'UNKNOWN'}
]]
-- @include "session"
-- @include "quiet"
local sessionKey, destroyingKey = KEYS[1], KEYS[2]
materialize(sessionKey, KEYS[4]) -- a quiet record (includes/quiet.lua) becomes a hash of its own first
local sessionId, inc, stage, now, attempt, token = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6] or ''
if attempt ~= '' and token == '' then return redis.error_reply('ERR a release attempt needs its token') end
if not STAGE_ORDER[stage] then return redis.error_reply('ERR unknown stage ' .. stage) end

local state = redis.call('HMGET', sessionKey, 's', 'i', 'st', 'ga', 'rf', 'gb')
if not state[1] then return { 'UNKNOWN' } end
if tonumber(state[2]) ~= inc then return { 'STALE', tonumber(state[2]) } end
if state[1] ~= 'D' then return { 'NOT_DESTROYING', state[1] } end
local current = STAGE_ORDER[state[3]]
if current == STAGE_ORDER[stage] and attempt ~= '' and tonumber(attempt) > tonumber(state[4] or '0') then
  local made, budget = tonumber(state[4] or '0'), tonumber(ARGV[7] or '')
  if state[5] then return { 'GAVE_UP', made } end
  if budget and tonumber(attempt) - tonumber(state[6] or '0') > budget then
    redis.call('HSET', sessionKey, 'rf', now)
    redis.call('ZREM', destroyingKey, sessionId)
    redis.call('ZADD', KEYS[3], now, sessionId)
    return { 'EXHAUSTED', made - tonumber(state[6] or '0') }
  end
  redis.call('HSET', sessionKey, 'ga', attempt, 'gt', token)
  redis.call('ZADD', destroyingKey, now, sessionId)
  return { 'REISSUED', tonumber(attempt) }
end
if current >= STAGE_ORDER[stage] then return { 'ALREADY', state[3] } end
redis.call('HSET', sessionKey, 'st', stage)
if attempt ~= '' then redis.call('HSET', sessionKey, 'ga', attempt, 'gt', token) end
appendTimeline(sessionKey, stage, now)
redis.call('ZADD', destroyingKey, now, sessionId)
return { 'ADVANCED', stage }
