--[[
  claimExpired: the deadline engine's claim of one due session. Atomic, so any number of engine replicas may race
  for the same session and exactly one wins. The deadline is re-checked here, so a heartbeat that landed after
  the engine read the index keeps the session alive; and the outage rule (includes/blind.lua) applies as in claimDue:
  a deadline whose silence overlapped a blind window is moved past it, and while the bucket is unheard (claimDue noted
  since when) a session due after that is not claimed. Windows are recorded by claimDue only.

  KEYS[1] session record   KEYS[2] bucket deadline index (ZSET)   KEYS[3] bucket destroy watchdog (ZSET)
  KEYS[4] bucket watch (HASH)   KEYS[5] bucket blind windows (ZSET)
  KEYS[6] bucket quiet hash (includes/quiet.lua): the record while it is quiet
  ARGV[1] session id   ARGV[2] now (ms)   ARGV[3] 1 to apply the outage rule, 0 not   ARGV[4] how long windows are kept (ms)

  Returns one of:
    {'CLAIMED', incarnation, deadline}   the deadline the outage rule gave it
    {'NOT_DUE', deadline}       refreshed meanwhile, moved past a blind window, or held while the bucket is unheard
    {'GONE'}                    no longer indexed (claimed by another replica, or closed); stray entries are removed
]]
-- @include "session"
-- @include "blind"
-- @include "quiet"
local sessionKey, deadlinesKey, destroyingKey, watchKey, blindKey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
materialize(sessionKey, KEYS[6]) -- a quiet record (includes/quiet.lua) becomes a hash of its own first
local sessionId, now, rule, retention = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1', tonumber(ARGV[4])

local deadline = redis.call('ZSCORE', deadlinesKey, sessionId)
if not deadline then return { 'GONE' } end
deadline = tonumber(deadline)
if deadline > now then return { 'NOT_DUE', deadline } end
local state = redis.call('HMGET', sessionKey, 's', 'i', 'pc', 'pt', 'w', 'bd', 'be')
if state[1] ~= 'A' then
  redis.call('ZREM', deadlinesKey, sessionId)
  return { 'GONE' }
end
local t = deadline
if rule and not state[3] then
  local holdFrom = tonumber(redis.call('HGET', watchKey, 'bs'))
  if holdFrom and deadline > holdFrom then return { 'NOT_DUE', deadline } end
  local base
  base, t = ruledDeadline(blindWindows(blindKey, now - retention), deadline, state[5], state[6], state[7])
  if t > now then
    deferDeadline(sessionKey, deadlinesKey, sessionId, base, t)
    return { 'NOT_DUE', t }
  end
end
claimDueSession(sessionKey, deadlinesKey, destroyingKey, sessionId, now, t, state[3], state[4])
return { 'CLAIMED', tonumber(state[2]), t }
