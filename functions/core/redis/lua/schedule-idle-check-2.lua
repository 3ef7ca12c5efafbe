--[[
  scheduleIdleCheck: sets (or clears) when activity-score's idle checker should next look at a session, but only if
  the schedule was computed from the session's current activity context: a replica that scored an older version
  leaves the index to the one that scored the newer (compare-and-set on the context version, like recordActivity).

  KEYS[1] activity context (HASH; field 'v' is its version)   KEYS[2] bucket idle-check index (ZSET)
  ARGV[1] session id   ARGV[2] context version the schedule was computed from ('0' = no context)
  ARGV[3] when to check (ms), or '' to remove the session from the index

  Returns one of:
    {'SCHEDULED', at}
    {'CLEARED'}
    {'STALE', currentVersion}   the context changed since it was read: its writer schedules
]]
local contextKey, idleKey = KEYS[1], KEYS[2]
local sessionId, expected, at = ARGV[1], ARGV[2], ARGV[3]

local version = redis.call('HGET', contextKey, 'v') or '0'
if version ~= expected then return { 'STALE', tonumber(version) } end
if at == '' then
  redis.call('ZREM', idleKey, sessionId)
  return { 'CLEARED' }
end
redis.call('ZADD', idleKey, tonumber(at), sessionId)
return { 'SCHEDULED', tonumber(at) }
