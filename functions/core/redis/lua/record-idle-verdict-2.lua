--[[
  recordIdleVerdict: activity-score's idle checker records the session.idle it is about to emit, by its event id,
  in the session's activity context; destroy-dispatch's claim for cause 'idle' (claim-destroy-6.lua) is refused unless
  the event it handles is the verdict recorded here. So a session.idle that the checker did not reach cannot end a
  session, whoever sent it: the Kafka Broker of prod does not check its subscribers' replies against the
  EventPolicies (README, "follow-on events as replies"), and any subscriber could answer with one.

  Written only while the session is active in the incarnation judged: a verdict about an ended or reopened session
  is never recorded (its claim would be STALE or ENDED anyway). A later verdict replaces an earlier one (the checker
  says the same verdict again, same id, while the session stays idle; a new one after new activity and new quiet).
  The context is deleted with the session's working state (purge-session-3.lua).

  KEYS[1] session record   KEYS[2] activity context (HASH; field 'iv')
  ARGV[1] incarnation judged   ARGV[2] the session.idle's event id

  Returns one of:
    {'RECORDED'}
    {'ENDED'}      the session is no longer active (destroying, destroyed) or is another incarnation now
    {'UNKNOWN'}    no such session, or no activity context (nothing was judged)
]]
local sessionKey, contextKey = KEYS[1], KEYS[2]
local incarnation, verdict = ARGV[1], ARGV[2]
if verdict == '' then return redis.error_reply('ERR recordIdleVerdict: empty event id') end

local state = redis.call('HMGET', sessionKey, 's', 'i')
if not state[1] or redis.call('EXISTS', contextKey) == 0 then return { 'UNKNOWN' } end
if state[1] ~= 'A' or state[2] ~= incarnation then return { 'ENDED' } end
redis.call('HSET', contextKey, 'iv', verdict)
return { 'RECORDED' }
