--[[
  claimDue: the deadline engine's claim of every due session of one bucket, up to a limit, in one step. Atomic, so
  any number of engine replicas may race for the same bucket: each due session is claimed by exactly one of them.
  The index is read and the sessions are claimed in the same call, so a heartbeat that landed before it keeps its
  session alive, and a wake-up costs the engine one round trip however many sessions fall due at once.
  It also applies the outage rule (includes/blind.lua): it notes that the bucket is watched, records the spans in
  which it was not (or in which no heartbeat could be heard), and moves each due deadline past them before claiming.

  KEYS[1] bucket deadline index (ZSET)   KEYS[2] bucket destroy watchdog (ZSET)   KEYS[3] bucket watch (HASH)
  KEYS[4] bucket blind windows (ZSET)
  KEYS[5] bucket quiet hash (includes/quiet.lua): the records of due sessions that are quiet
  ARGV[1] now (ms)   ARGV[2] most sessions to claim   ARGV[3] the bucket's session record key prefix
  (`<prefix>:{<bucket>}:s:`): records are named from it because their ids are only known once the index is read;
  they carry the bucket's hash tag, so on Redis Cluster they live in the slot of KEYS[1].
  ARGV[4] BLIND_GAP_MS: a bucket unwatched for longer was blind (0: the outage rule is off, nothing is noted or held)
  ARGV[5] holdFrom: since when the fleet's heartbeats are unheard ('' if they are heard), the deadline engine's
          verdict (functions/heartbeat-timeout/ingest-silence.ts): sessions due after it are held, unclaimed
  ARGV[6] heardAt: when heartbeats were last heard ('' if never): a hold this bucket still keeps is closed there,
          and the unheard span recorded as blind
  ARGV[7] how long windows are kept (ms)

  Returns {head, skipped, deferred, holdFrom, blindFrom, blindTo, n, hb, hg, u, unresolved1, ..., unresolvedU, id1,
  incarnation1, deadline1, id2, ...}:
    head       the bucket's earliest deadline after the claims (ms), or '' when the index is empty or its due
               sessions are held (then the engine's poll looks again)
    skipped    due entries whose session had ended (closed meanwhile); they are removed
    deferred   due sessions whose silence overlapped a blind window: their deadline moved past it, unclaimed
    holdFrom   the hold this bucket keeps ('' if none)
    blindFrom, blindTo   the blind window this call recorded ('' '' if none)
    n, hb, hg  the sessions indexed after the claims, and the bucket's heartbeat marks (heartbeat-n.lua; '' if none),
               from which the engine judges the fleet's silence
    u, then u due ids whose record is not here: a stray entry, or, on Redis Cluster, a record not yet moved to the
               node a resharding moves the bucket's slot to (built keys get no ASK or TRYAGAIN; on the node the slot
               is leaving, a record key it does not have fails the script with Redis's "non local key" error, before
               any write: see the first loop below); left as they are, for the caller to claim one by one with
               declared keys (claimExpired), which Redis redirects correctly
    then one triple per session claimed, in deadline order; the deadline is the one the outage rule gave it
]]
-- @include "session"
-- @include "blind"
-- @include "quiet"
local deadlinesKey, destroyingKey, watchKey, blindKey, quietKey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now, limit, recordPrefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local gapMs, retention = tonumber(ARGV[4]), tonumber(ARGV[7])
local verdictHold, heardAt = tonumber(ARGV[5]), tonumber(ARGV[6])
local fmt = string.format

local blindFrom, blindTo, holdFrom = '', '', nil
local watch = redis.call('HMGET', watchKey, 'seen', 'bs', 'hb', 'hg')

-- On Redis Cluster, while a resharding moves this bucket's slot, a record key this node does not have (moved already,
-- or a quiet record's, which never was a key) is a key of the migrating slot, and the first command on it fails the
-- script ("non local key"). Each record this call may claim (due by now, or by the hold's start when a hold applies,
-- as below) is touched before anything is written, so that such a call fails whole (the engine's next poll claims
-- again) instead of failing halfway with the claims before it made and never reported.
local probeTo = now
if gapMs > 0 and verdictHold then probeTo = math.min(now, tonumber(watch[2]) or verdictHold) end
for _, sessionId in ipairs(redis.call('ZRANGEBYSCORE', deadlinesKey, '-inf', probeTo, 'LIMIT', 0, limit)) do
  redis.call('EXISTS', recordPrefix .. sessionId)
end

if gapMs > 0 then
  local seen = tonumber(watch[1])
  -- Unwatched: no engine claimed here for longer than the gap (Redis down or unreachable, or no engine running).
  if seen and now - seen > gapMs then
    recordBlind(blindKey, seen, now, now, retention)
    blindFrom, blindTo = seen, now
  end
  if not seen or now > seen then redis.call('HSET', watchKey, 'seen', fmt('%d', now)) end
  -- Unheard, by the engine's verdict on the whole fleet: the first replica to hold sets the span's start (bs), which
  -- open-session and claimExpired read too.
  local bs = tonumber(watch[2])
  if verdictHold then
    if not bs then
      bs = verdictHold
      redis.call('HSET', watchKey, 'bs', fmt('%d', bs))
    end
    holdFrom = bs
  elseif bs then
    -- Heard again (or held as long as allowed): the unheard span ends there.
    local to = heardAt or bs
    redis.call('HDEL', watchKey, 'bs')
    if to > bs then
      recordBlind(blindKey, bs, to, now, retention)
      blindFrom, blindTo = bs, to
    end
  end
end

-- While unheard, only what fell due before the silence began is claimed now.
local upTo = now
if holdFrom and holdFrom < upTo then upTo = holdFrom end
local due = redis.call('ZRANGEBYSCORE', deadlinesKey, '-inf', upTo, 'WITHSCORES', 'LIMIT', 0, limit)
local ruled = gapMs > 0 and redis.call('EXISTS', blindKey) == 1
local windows = nil
local claimed, unresolved, skipped, deferred = {}, {}, 0, 0
for k = 1, #due, 2 do
  local sessionId, deadline = due[k], tonumber(due[k + 1])
  local sessionKey = recordPrefix .. sessionId
  materialize(sessionKey, quietKey) -- a quiet record (includes/quiet.lua) becomes a hash of its own first
  local state = redis.call('HMGET', sessionKey, 's', 'i', 'pc', 'pt', 'w', 'bd', 'be')
  if state[1] == 'A' then
    local t = deadline
    -- An end seen before the open (pc) is due at once, heard or not.
    if ruled and not state[3] then
      windows = windows or blindWindows(blindKey, now - retention)
      local base
      base, t = ruledDeadline(windows, deadline, state[5], state[6], state[7])
      if t > now then
        deferDeadline(sessionKey, deadlinesKey, sessionId, base, t)
        deferred = deferred + 1
      end
    end
    if t <= now then
      claimDueSession(sessionKey, deadlinesKey, destroyingKey, sessionId, now, t, state[3], state[4])
      local n = #claimed
      claimed[n + 1], claimed[n + 2], claimed[n + 3] = sessionId, tonumber(state[2]), t
    end
  elseif state[1] then
    redis.call('ZREM', deadlinesKey, sessionId)
    skipped = skipped + 1
  else
    unresolved[#unresolved + 1] = sessionId
  end
end
local head = redis.call('ZRANGE', deadlinesKey, 0, 0, 'WITHSCORES')[2] or ''
if holdFrom and head ~= '' and tonumber(head) <= now then head = '' end
local out = {
  head, skipped, deferred, holdFrom and fmt('%d', holdFrom) or '', blindFrom == '' and '' or fmt('%d', blindFrom),
  blindTo == '' and '' or fmt('%d', blindTo), redis.call('ZCARD', deadlinesKey), watch[3] or '', watch[4] or '', #unresolved,
}
for _, id in ipairs(unresolved) do out[#out + 1] = id end
for _, v in ipairs(claimed) do out[#out + 1] = v end
return out
