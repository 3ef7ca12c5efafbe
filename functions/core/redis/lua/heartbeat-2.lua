--[[
  heartbeat: session.heartbeats of one bucket, applied in one call (a batch of one is the common case; under load
  the caller groups concurrent heartbeats per bucket, which is what lets one Redis take 100k heartbeats/s). Each
  pushes its session's deadline to live-from + window, never earlier than it already is, so a duplicate or a
  redelivered older heartbeat changes nothing (max() is idempotent).

  It also notes, for the outage rule (includes/blind.lua), that the bucket's heartbeats are heard: when the last call
  was (`hb`) and the running mean gap between calls (`hg`), from which the deadline engine tells a silence of the
  ingest path (the Broker or heartbeat-timeout down) from the fleet's ordinary quiet
  (functions/heartbeat-timeout/ingest-silence.ts).

  The call is the hottest there is, so it is shaped for cost (bench:compare's CPU per heartbeat): a batch's session
  ids travel as one argument and their ages as another (per-argument handling was most of the caller's CPU and a
  good part of Redis's), every deadline is moved by ONE ZADD, and the reply is integers only.

  KEYS[1] bucket deadline index (ZSET)   KEYS[2] bucket watch (HASH)
  ARGV[1] the bucket's session record key prefix (`<prefix>:{<bucket>}:s:`): a record's key is the prefix and its
          session id, built here rather than sent, because a third of the call's bytes were those keys; they carry
          the bucket's hash tag, so on Redis Cluster they live in KEYS[1]'s slot
  ARGV[2] now (ms)
  ARGV[3] the session ids of the heartbeats, separated by single spaces (ids never contain one: SESSION_ID_PATTERN)
  ARGV[4] their ages, in the same order, separated by single spaces: now − live-from in ms, ≥ 0 (the event's time,
          capped at now)
  ARGV[5..] only when a heartbeat of the batch names a tenant: the tenant each names, in order ('' for none)

  Returns a flat array of integers, two per heartbeat, in order (or a TRYAGAIN error, see below):
    incarnation, deadline        REFRESHED: the session's deadline after the call (ms, > 0)
    0, -1                        UNKNOWN: no such session (never opened, or its tombstone expired)
    incarnation, -2              NOT_OWNER: the session belongs to another tenant; its deadline is not moved
    incarnation, -3              ENDED, destroying (D; or an end already seen, see pc): a late heartbeat never revives it
    incarnation, -4              ENDED, destroyed (X)
]]
local call, tonumber = redis.call, tonumber
local deadlinesKey, watchKey, recordPrefix, now = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])
local ids, ages = {}, {}
for id in string.gmatch(ARGV[3], '[^ ]+') do ids[#ids + 1] = id end
for age in string.gmatch(ARGV[4], '[^ ]+') do ages[#ages + 1] = tonumber(age) end
local tenants = #ARGV > 4
if #ids ~= #ages or (tenants and #ARGV - 4 ~= #ids) then
  return redis.error_reply('ERR heartbeat: ' .. #ids .. ' session ids, ' .. #ages .. ' ages and ' .. (#ARGV - 4) .. ' tenants')
end
local out = {}

-- Heard: the time of this call, and a running mean of the gaps between calls (each gap capped at a minute, so an
-- outage does not teach the bucket that silences are normal). Calls closer than 50 ms are one moment for this
-- purpose (silences are judged in seconds), so a busy bucket writes the marks at most 20 times a second, not on
-- every call. Replicas' clocks (each anchored to Redis TIME) differ by a few ms: never backwards.
local heard = call('HMGET', watchKey, 'hb', 'hg')
local last, mean = tonumber(heard[1]), tonumber(heard[2])
if not last then
  call('HSET', watchKey, 'hb', string.format('%d', now))
elseif now - last >= 50 then
  local gap = math.min(now - last, 60000)
  mean = mean and (mean * 0.9 + gap * 0.1) or gap
  call('HSET', watchKey, 'hb', string.format('%d', now), 'hg', string.format('%.1f', mean))
end

-- The sessions to refresh: ZADD arguments (GT CH, then score, member pairs) and where each one's reply goes.
local zadd, slots, moving = { 'GT', 'CH' }, {}, 0
local n = 0
for k = 1, #ids do
  local sessionId = ids[k]
  local state = call('HMGET', recordPrefix .. sessionId, 's', 'i', 'w', 'tn', 'pc')
  local s = state[1]
  if not s then
    -- Indexed but no record here: on Redis Cluster, the bucket's slot is being resharded and this record has moved
    -- already. Declared keys would make Redis answer TRYAGAIN; built keys do not, so the script does (ioredis
    -- retries it, and else the caller answers 5xx): a heartbeat must never be dropped as UNKNOWN for it. Nothing has
    -- been written yet but the watch marks, so the retry applies the whole batch once.
    if call('ZSCORE', deadlinesKey, sessionId) then
      return redis.error_reply('TRYAGAIN session record ' .. recordPrefix .. sessionId .. ' is not on this node, its deadline is')
    end
    out[n + 1], out[n + 2] = 0, -1
  elseif s ~= 'A' or state[5] then
    -- pc: an end sent after its open already arrived; it is due now, and a heartbeat sent before that end must not
    -- push it back.
    out[n + 1], out[n + 2] = tonumber(state[2]), (s == 'X' and not state[5]) and -4 or -3
  elseif (state[4] or '') ~= (tenants and ARGV[k + 4] or '') then
    out[n + 1], out[n + 2] = tonumber(state[2]), -2
  else
    local target = now - ages[k] + tonumber(state[3])
    out[n + 1], out[n + 2] = tonumber(state[2]), target
    moving = moving + 1
    zadd[2 * moving + 1], zadd[2 * moving + 2], slots[moving] = target, sessionId, n + 2
  end
  n = n + 2
end

-- max(current, target) for all at once: ZADD GT only ever raises a score, and CH counts the ones it changed, so the
-- common case (every deadline moved out) needs no read; otherwise the scores it left are read back in one call. (A
-- session named twice in one batch is answered the deadline the last of them left.)
if moving > 0 and call('ZADD', deadlinesKey, unpack(zadd)) < moving then
  local members = {}
  for j = 1, moving do members[j] = zadd[2 * j + 2] end
  local scores = call('ZMSCORE', deadlinesKey, unpack(members))
  for j = 1, moving do out[slots[j]] = tonumber(scores[j]) end
end
return out
