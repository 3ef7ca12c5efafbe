-- The outage rule (inlined where a script says `-- @include "blind"`): a live session is never expired because
-- session-reaper could not hear its heartbeats. A bucket's *blind windows* are the spans in which it could not:
--   - nobody watched it: no deadline engine claimed in it for longer than BLIND_GAP_MS (Redis was down or
--     unreachable, or every engine replica was) — measured in Redis itself, from the bucket's `seen` mark;
--   - nothing was heard: no heartbeat reached the fleet for far longer than its rhythm makes likely, while sessions
--     were due to send some (the Broker, the ingest path or heartbeat-timeout was down) — judged by the deadline engine
--     from every bucket's `hb` and `hg` (functions/heartbeat-timeout/ingest-silence.ts) and passed to each claim.
-- A session's silence counts only outside them: a session last heard at `from` with liveness window `w` is expired at
-- the first t where (t - from) minus the blind time in (from, t) reaches w. So after an outage every session gets what
-- was left of its window when the outage began, counted from the outage's end, and a live one is heard again first
-- (its next heartbeat comes within one interval); a dead one is claimed that much later, never earlier.
--
-- Windows: ZSET member '<start>:<end>', score end (ms). The record of a session whose deadline was moved by the rule
-- keeps `bd` (the deadline its silence gave) and `be` (the deadline the rule set), so the move is computed once: a
-- heartbeat since (the index no longer holds `be`) starts the count afresh.

-- The blind windows ending after `since`, merged where they overlap (a Redis outage is both unwatched and unheard),
-- in order of start.
local function blindWindows(blindKey, since)
  local raw = redis.call('ZRANGEBYSCORE', blindKey, '(' .. string.format('%d', since), '+inf')
  local ws = {}
  for _, m in ipairs(raw) do
    local s, e = string.match(m, '^(%d+):(%d+)$')
    if s then ws[#ws + 1] = { tonumber(s), tonumber(e) } end
  end
  table.sort(ws, function(a, b) return a[1] < b[1] end)
  local merged = {}
  for _, w in ipairs(ws) do
    local last = merged[#merged]
    if last and w[1] <= last[2] then
      if w[2] > last[2] then last[2] = w[2] end
    else
      merged[#merged + 1] = { w[1], w[2] }
    end
  end
  return merged
end

-- Where a deadline lies once the blind time in the silence before it is not counted. `deadline - window` is when the
-- session was last heard (or its hold began counting down).
local function extendedDeadline(windows, deadline, window)
  local from, t = deadline - window, deadline
  for _, w in ipairs(windows) do
    if w[1] >= t then break end
    if w[2] > from then t = t + (w[2] - math.max(w[1], from)) end
  end
  return t
end

-- Keeps a blind window; windows older than `retention` before `now` can no longer move any deadline (no liveness
-- window is that long) and go, as do all but the latest 64.
local function recordBlind(blindKey, s, e, now, retention)
  if e <= s then return end
  redis.call('ZADD', blindKey, e, string.format('%d:%d', s, e))
  redis.call('ZREMRANGEBYSCORE', blindKey, '-inf', '(' .. string.format('%d', now - retention))
  redis.call('ZREMRANGEBYRANK', blindKey, 0, -65)
end

-- The deadline the rule gives a due session whose index score is `score`: its silence's deadline (`bd` if the rule
-- moved it to exactly `score` before, else `score`), extended past the windows. `rec` holds the record's w, bd, be.
local function ruledDeadline(windows, score, w, bd, be)
  local base = score
  if be and bd and tonumber(be) == score then base = tonumber(bd) end
  return base, extendedDeadline(windows, base, tonumber(w) or 0)
end

-- Moves a due session's deadline to `t` (later than now), remembering the deadline its silence gave.
local function deferDeadline(sessionKey, deadlinesKey, sessionId, base, t)
  redis.call('ZADD', deadlinesKey, 'XX', t, sessionId)
  redis.call('HSET', sessionKey, 'bd', string.format('%d', base), 'be', string.format('%d', t))
end
