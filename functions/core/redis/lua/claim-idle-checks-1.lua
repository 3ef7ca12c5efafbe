--[[
  claimIdleChecks: an idle checker's claim of the due sessions of one bucket. Each claimed session is pushed to the
  lease's end, so another checker replica does not take it while this one decides; if this one dies, the session
  comes due again when the lease ends. Atomic, so any number of replicas may race for the same bucket.

  KEYS[1] bucket idle-check index (ZSET)
  ARGV[1] now (ms)   ARGV[2] most sessions to claim   ARGV[3] lease end (ms)

  Returns {sessionId1, dueAt1, sessionId2, dueAt2, ...} (empty when nothing is due)
]]
local idleKey = KEYS[1]
local now, limit, leaseUntil = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

local due = redis.call('ZRANGEBYSCORE', idleKey, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #due, 2 do redis.call('ZADD', idleKey, leaseUntil, due[i]) end
return due
