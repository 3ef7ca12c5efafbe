--[[
  claimStalled: the deadline engine's watchdog claims a destroy (or a migration's release) that made no progress
  for the stall time, marking it touched so that only one replica resumes it and not again before another stall.

  KEYS[1] session record   KEYS[2] bucket destroy watchdog (ZSET)   KEYS[3] bucket migrations   KEYS[4] bucket placements
  KEYS[5] bucket quiet hash (includes/quiet.lua): the record while it is quiet
  ARGV[1] watchdog member (a session id, or '!m:<id>:<incarnation>' for a migration)   ARGV[2] now (ms)
  ARGV[3] stall (ms)   ARGV[4] session id   ARGV[5] incarnation of a migration member ('' otherwise)

  Returns one of:
    {'STALLED', incarnation, stage, cause, node, runtimeUrl, bytes, attempt}
    {'MIGRATION', incarnation, node, runtimeUrl, bytes, token}
    {'NOT_STALLED'}
    {'GONE'}      nothing to resume; stray entries are removed
]]
-- @include "session"
-- @include "quiet"
local sessionKey, destroyingKey, migrationsKey, placementsKey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
materialize(sessionKey, KEYS[5]) -- a quiet record (includes/quiet.lua) becomes a hash of its own first
local member, now, stall, sessionId, migrationInc = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]

local touched = redis.call('ZSCORE', destroyingKey, member)
if not touched then return { 'GONE' } end
if tonumber(touched) > now - stall then return { 'NOT_STALLED' } end

if migrationInc ~= '' then
  local migration = redis.call('HGET', migrationsKey, sessionId .. ':' .. migrationInc)
  if not migration then
    redis.call('ZREM', destroyingKey, member)
    return { 'GONE' }
  end
  local pid, bytes, token = parseMigration(migration)
  local node, url = placementOf(placementsKey, pid)
  redis.call('ZADD', destroyingKey, now, member)
  return { 'MIGRATION', tonumber(migrationInc), node, url, bytes, token }
end

local state = redis.call('HMGET', sessionKey, 's', 'i', 'st', 'c', 'p', 'g', 'ga')
if state[1] ~= 'D' then
  redis.call('ZREM', destroyingKey, member)
  return { 'GONE' }
end
local node, url = placementOf(placementsKey, state[5])
redis.call('ZADD', destroyingKey, now, member)
return { 'STALLED', tonumber(state[2]), state[3], state[4], node, url, tonumber(state[6] or '0'), tonumber(state[7] or '0') }
