--[[
  claimDue: the deadline engine's claim of every due session of one bucket, up to a limit, in one step. Atomic, so
  any number of engine replicas may race for the same bucket: each due session is claimed by exactly one of them.
  The index is read and the sessions are claimed in the same call, so a heartbeat that landed before it keeps its
  session alive, and a wake-up costs the engine one round trip however many sessions fall due at once.
  It also applies the outage rule (includes/blind.lua): it notes that the bucket is watched, records the spans in
  which it was not (or in which no heartbeat could be heard), and moves each due deadline past them before claiming.

  KEYS[1] bucket deadline index (ZSET)   KEYS[2] bucket destroy watchdog (ZSET)   KEYS[3] bucket watch (HASH)
  KEYS[4] bucket blind windows (ZSET)
  ARGV[1] now (ms)   ARGV[2] most sessions to claim   ARGV[3] the bucket's session record key prefix
  (`<prefix>:{<bucket>}:s:`): records are named from it because their ids are only known once the index is read;
  they carry the bucket's hash tag, so on Redis Cluster they live in the slot of KEYS[1].
  ARGV[4] BLIND_GAP_MS: a bucket unwatched for longer was blind (0: the outage rule is off, nothing is noted)
  ARGV[5] INGEST_SILENCE_MS: the least silence of the bucket's heartbeats that counts as unheard (0: not judged)
  ARGV[6] BLIND_HOLD_MAX_MS: the longest an unheard span holds expiries   ARGV[7] how long windows are kept (ms)

  Returns {head, skipped, deferred, holdFrom, blindFrom, blindTo, u, unresolved1, ..., unresolvedU, id1, incarnation1,
  deadline1, id2, ...}:
    head       the bucket's earliest deadline after the claims (ms), or '' when the index is empty or its due
               sessions are held (then the engine's poll looks again)
    skipped    due entries whose session had ended (closed meanwhile); they are removed
    deferred   due sessions whose silence overlapped a blind window: their deadline moved past it, unclaimed
    holdFrom   since when no heartbeat has been heard here while some were due ('' if they are): sessions due
               after it are held, unclaimed, until heartbeats are heard again (or BLIND_HOLD_MAX_MS has passed)
    blindFrom, blindTo   the blind window this call recorded ('' '' if none)
    u, then u due ids whose record is not here: a stray entry, or, on Redis Cluster, a record already moved by a
               resharding of the bucket's slot (built keys get no ASK or TRYAGAIN); left as they are, for the caller
               to claim one by one with declared keys (claimExpired), which Redis redirects correctly
    then one triple per session claimed, in deadline order; the deadline is the one the outage rule gave it
]]
-- @include "session"
-- @include "blind"
local deadlinesKey, destroyingKey, watchKey, blindKey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, limit, recordPrefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local gapMs, silenceMs, holdMaxMs, retention = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local fmt = string.format

local blindFrom, blindTo, holdFrom = '', '', nil
if gapMs > 0 then
  local watch = redis.call('HMGET', watchKey, 'seen', 'hb', 'hg', 'bs', 'bx')
  local seen = tonumber(watch[1])
  -- Unwatched: no engine claimed here for longer than the gap (Redis down or unreachable, or no engine running).
  if seen and now - seen > gapMs then
    recordBlind(blindKey, seen, now, now, retention)
    blindFrom, blindTo = seen, now
  end
  if not seen or now > seen then redis.call('HSET', watchKey, 'seen', fmt('%d', now)) end
  -- Unheard: no heartbeat for far longer than this bucket's rhythm makes likely, while sessions are indexed.
  if silenceMs > 0 then
    local hb, hg, bs, bx = tonumber(watch[2]), tonumber(watch[3]), tonumber(watch[4]), tonumber(watch[5])
    local silent = hb ~= nil and hg ~= nil and bx ~= hb and now - hb > math.max(silenceMs, SILENCE_FACTOR * hg)
      and redis.call('ZCARD', deadlinesKey) > 0
    if silent then
      local since = bs or hb
      if now - since > holdMaxMs then
        -- Held as long as allowed: the senders may really have stopped. The span counts as blind; expiries resume.
        recordBlind(blindKey, since, since + holdMaxMs, now, retention)
        redis.call('HSET', watchKey, 'bx', fmt('%d', hb))
        redis.call('HDEL', watchKey, 'bs')
        blindFrom, blindTo = since, since + holdMaxMs
      else
        if not bs then redis.call('HSET', watchKey, 'bs', fmt('%d', since)) end
        holdFrom = since
      end
    elseif bs then
      -- Heard again (or nothing is due any more): the unheard span ends with the latest heartbeat.
      recordBlind(blindKey, bs, hb or bs, now, retention)
      redis.call('HDEL', watchKey, 'bs')
      if (hb or bs) > bs then blindFrom, blindTo = bs, hb end
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
local out = { head, skipped, deferred, holdFrom and fmt('%d', holdFrom) or '', blindFrom == '' and '' or fmt('%d', blindFrom), blindTo == '' and '' or fmt('%d', blindTo), #unresolved }
for _, id in ipairs(unresolved) do out[#out + 1] = id end
for _, v in ipairs(claimed) do out[#out + 1] = v end
return out
