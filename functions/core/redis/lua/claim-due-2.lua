--[[
  claimDue: the deadline engine's claim of every due session of one bucket, up to a limit, in one step. Atomic, so
  any number of engine replicas may race for the same bucket: each due session is claimed by exactly one of them.
  The index is read and the sessions are claimed in the same call, so a heartbeat that landed before it keeps its
  session alive, and a wake-up costs the engine one round trip however many sessions fall due at once.

  KEYS[1] bucket deadline index (ZSET)   KEYS[2] bucket destroy watchdog (ZSET)
  ARGV[1] now (ms)   ARGV[2] most sessions to claim   ARGV[3] the bucket's session record key prefix
  (`<prefix>:{<bucket>}:s:`): records are named from it because their ids are only known once the index is read;
  they carry the bucket's hash tag, so on Redis Cluster they live in the slot of KEYS[1].

  Returns {head, skipped, u, unresolved1, ..., unresolvedU, id1, incarnation1, deadline1, id2, ...}:
    head       the bucket's earliest deadline after the claims (ms), or '' when the index is empty
    skipped    due entries whose session had ended (closed meanwhile); they are removed
    u, then u due ids whose record is not here: a stray entry, or, on Redis Cluster, a record already moved by a
               resharding of the bucket's slot (built keys get no ASK or TRYAGAIN); left as they are, for the caller
               to claim one by one with declared keys (claimExpired), which Redis redirects correctly
    then one triple per session claimed, in deadline order
]]
-- @include "session"
local deadlinesKey, destroyingKey = KEYS[1], KEYS[2]
local now, limit, recordPrefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]

local due = redis.call('ZRANGEBYSCORE', deadlinesKey, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
local claimed, unresolved, skipped = {}, {}, 0
for k = 1, #due, 2 do
  local sessionId, deadline = due[k], tonumber(due[k + 1])
  local sessionKey = recordPrefix .. sessionId
  local state = redis.call('HMGET', sessionKey, 's', 'i', 'pc', 'pt')
  if state[1] == 'A' then
    claimDueSession(sessionKey, deadlinesKey, destroyingKey, sessionId, now, deadline, state[3], state[4])
    local n = #claimed
    claimed[n + 1], claimed[n + 2], claimed[n + 3] = sessionId, tonumber(state[2]), deadline
  elseif state[1] then
    redis.call('ZREM', deadlinesKey, sessionId)
    skipped = skipped + 1
  else
    unresolved[#unresolved + 1] = sessionId
  end
end
local head = redis.call('ZRANGE', deadlinesKey, 0, 0, 'WITHSCORES')
local out = { head[2] or '', skipped, #unresolved }
for _, id in ipairs(unresolved) do out[#out + 1] = id end
for _, v in ipairs(claimed) do out[#out + 1] = v end
return out
