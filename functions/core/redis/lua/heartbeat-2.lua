--[[
  heartbeat: a session.heartbeat — pushes the deadline to live-from + window, never earlier than it already is,
  so a duplicate or a redelivered older heartbeat changes nothing (max() is idempotent).

  KEYS[1] session record   KEYS[2] bucket deadline index (ZSET)
  ARGV[1] session id       ARGV[2] live-from (ms; the event's time, capped at now)

  Returns one of:
    {'REFRESHED', incarnation, deadline}
    {'UNKNOWN'}                             no such session (never opened, or its tombstone expired)
    {'ENDED', incarnation, state}           destroying (D) or destroyed (X): a late heartbeat never revives it
]]
local sessionKey, deadlinesKey = KEYS[1], KEYS[2]
local sessionId, liveFrom = ARGV[1], tonumber(ARGV[2])

local state = redis.call('HMGET', sessionKey, 's', 'i', 'w')
if not state[1] then return { 'UNKNOWN' } end
if state[1] ~= 'A' then return { 'ENDED', tonumber(state[2]), state[1] } end
redis.call('ZADD', deadlinesKey, 'GT', liveFrom + tonumber(state[3]), sessionId)
return { 'REFRESHED', tonumber(state[2]), tonumber(redis.call('ZSCORE', deadlinesKey, sessionId)) }
