--[[
  claimExpired: the deadline engine's claim of one due session. Atomic, so any number of engine replicas may race
  for the same session and exactly one wins. The deadline is re-checked here, so a heartbeat that landed after
  the engine read the index keeps the session alive.

  KEYS[1] session record   KEYS[2] bucket deadline index (ZSET)   KEYS[3] bucket destroy watchdog (ZSET)
  ARGV[1] session id   ARGV[2] now (ms)

  Returns one of:
    {'CLAIMED', incarnation, deadline}
    {'NOT_DUE', deadline}       refreshed meanwhile
    {'GONE'}                    no longer indexed (claimed by another replica, or closed); stray entries are removed
]]
-- @include "session"
local sessionKey, deadlinesKey, destroyingKey = KEYS[1], KEYS[2], KEYS[3]
local sessionId, now = ARGV[1], tonumber(ARGV[2])

local deadline = redis.call('ZSCORE', deadlinesKey, sessionId)
if not deadline then return { 'GONE' } end
deadline = tonumber(deadline)
if deadline > now then return { 'NOT_DUE', deadline } end
local state = redis.call('HMGET', sessionKey, 's', 'i', 'pc', 'pt')
if state[1] ~= 'A' then
  redis.call('ZREM', deadlinesKey, sessionId)
  return { 'GONE' }
end
claimDueSession(sessionKey, deadlinesKey, destroyingKey, sessionId, now, deadline, state[3], state[4])
return { 'CLAIMED', tonumber(state[2]), deadline }
