--[[
  recordIdleVerdict: activity-score's idle checker records the session.idle it is about to emit, by its event id,
  in the session's activity context; destroy-dispatch's claim for cause 'idle' (claim-destroy-7.lua) is refused unless
  the event it handles is the verdict recorded here. So a session.idle that the checker did not reach cannot end a
  session, whoever sent it: the Kafka Broker of prod does not check its subscribers' replies against the
  EventPolicies (README, "follow-on events as replies"), and any subscriber could answer with one.

  Written only while the session is active in the incarnation judged: a verdict about an ended or reopened session
  is never recorded (its claim would be STALE or ENDED anyway). The last four verdicts are kept, each with the time
  it was reached: the checker says a verdict again after each idle lease, under a new id when the load tier moved
  its idle moment, and one still on its way (or redelivered) must still be applied; the claim takes the recorded
  time, never the event's, so a recorded verdict replayed later with a fresh time is still judged against the
  activity since its own moment. The same id recorded again moves to the newest place with the newer time: the
  checker judged it idle again then, on the context as it is now. The context is deleted with the session's working
  state (purge-session-4.lua).

  KEYS[1] session record   KEYS[2] activity context (HASH; field 'iv', as includes/idle-verdicts.lua reads it)
  KEYS[3] bucket quiet hash (includes/quiet.lua): the record while it is quiet
  ARGV[1] incarnation judged   ARGV[2] the session.idle's event id   ARGV[3] when the verdict was reached (ms)

  Returns one of:
    {'RECORDED'}
    {'ENDED'}      the session is no longer active (destroying, destroyed) or is another incarnation now
    {'UNKNOWN'}    no such session, or no activity context (nothing was judged)
]]
-- @include "idle-verdicts"
-- @include "quiet"
local sessionKey, contextKey = KEYS[1], KEYS[2]
materialize(sessionKey, KEYS[3]) -- a quiet record (includes/quiet.lua) becomes a hash of its own first
local incarnation, verdict, at = ARGV[1], ARGV[2], verdictTime(ARGV[3])
if verdict == '' or string.find(verdict, ' ', 1, true) then return redis.error_reply('ERR recordIdleVerdict: event id empty or with a space') end
if not at then return redis.error_reply('ERR recordIdleVerdict: the verdict time is not a time in ms') end

local state = redis.call('HMGET', sessionKey, 's', 'i')
if not state[1] or redis.call('EXISTS', contextKey) == 0 then return { 'UNKNOWN' } end
if state[1] ~= 'A' or state[2] ~= incarnation then return { 'ENDED' } end
local kept, newest = {}, at
for _, recorded in ipairs(readIdleVerdicts(contextKey)) do
  if recorded.id == verdict then newest = math.max(at, verdictTime(recorded.at) or at)
  else kept[#kept + 1] = recorded.id .. ' ' .. recorded.at end
end
kept[#kept + 1] = verdict .. ' ' .. string.format('%d', newest)
while #kept > IDLE_VERDICTS_KEPT do table.remove(kept, 1) end
redis.call('HSET', contextKey, 'iv', table.concat(kept, ' '))
return { 'RECORDED' }
