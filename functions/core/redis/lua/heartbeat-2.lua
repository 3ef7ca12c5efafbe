--[[
  heartbeat: session.heartbeats of one bucket, applied in one call (a batch of one is the common case; under load
  the caller groups concurrent heartbeats per bucket, which is what lets one Redis take 100k heartbeats/s). Each
  pushes its session's deadline to live-from + window, never earlier than it already is, so a duplicate or a
  redelivered older heartbeat changes nothing (max() is idempotent).

  It also notes, for the outage rule (includes/blind.lua), that the bucket's heartbeats are heard: when the last call
  was (`hb`) and the running mean gap between calls (`hg`), from which the deadline engine tells a silence of the
  ingest path (the Broker or heartbeat-timeout down) from the fleet's ordinary quiet
  (functions/heartbeat-timeout/ingest-silence.ts).

  KEYS[1] bucket deadline index (ZSET)   KEYS[2] bucket watch (HASH)
  ARGV[1] the bucket's session record key prefix (`<prefix>:{<bucket>}:s:`): a record's key is the prefix and its
          session id, built here rather than sent, because the heartbeat is the hottest call there is and a third of
          its bytes were those keys; they carry the bucket's hash tag, so on Redis Cluster they live in KEYS[1]'s slot
  ARGV[2] now (ms)
  ARGV[3i], ARGV[3i+1], ARGV[3i+2]        session id, live-from (ms; the event's time, capped at now) and the tenant
                                          the event names ('' for none) of heartbeat i

  Returns a flat array, three entries per heartbeat, in order (or a TRYAGAIN error, see below):
    'REFRESHED', incarnation, deadline
    'UNKNOWN', 0, 0                    no such session (never opened, or its tombstone expired)
    'ENDED', incarnation, state        destroying (D) or destroyed (X): a late heartbeat never revives it
    'NOT_OWNER', incarnation, 0        the session belongs to another tenant: its deadline is not moved
]]
local call, tonumber = redis.call, tonumber
local deadlinesKey, watchKey, recordPrefix, now = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])
local out, n = {}, 0

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

for k = 3, #ARGV, 3 do
  local sessionId = ARGV[k]
  local state = call('HMGET', recordPrefix .. sessionId, 's', 'i', 'w', 'tn', 'pc')
  local s = state[1]
  if not s then
    -- Indexed but no record here: on Redis Cluster, the bucket's slot is being resharded and this record has moved
    -- already. Declared keys would make Redis answer TRYAGAIN; built keys do not, so the script does (ioredis
    -- retries it, and else the caller answers 5xx): a heartbeat must never be dropped as UNKNOWN for it.
    if call('ZSCORE', deadlinesKey, sessionId) then
      return redis.error_reply('TRYAGAIN session record ' .. recordPrefix .. sessionId .. ' is not on this node, its deadline is')
    end
    out[n + 1], out[n + 2], out[n + 3] = 'UNKNOWN', 0, 0
  elseif s ~= 'A' or state[5] then
    -- pc: an end sent after its open already arrived; it is due now, and a heartbeat sent before that end must not
    -- push it back.
    out[n + 1], out[n + 2], out[n + 3] = 'ENDED', tonumber(state[2]), state[5] and 'D' or s
  elseif (state[4] or '') ~= ARGV[k + 2] then
    out[n + 1], out[n + 2], out[n + 3] = 'NOT_OWNER', tonumber(state[2]), 0
  else
    -- max(current, target): ZADD GT only ever raises the score, and CH says whether it did, so the common case
    -- (the deadline moved out) needs no read; only a heartbeat that changed nothing reads the score it left.
    local target = tonumber(ARGV[k + 1]) + tonumber(state[3])
    local current = target
    if call('ZADD', deadlinesKey, 'GT', 'CH', target, sessionId) == 0 then
      current = tonumber(call('ZSCORE', deadlinesKey, sessionId))
    end
    out[n + 1], out[n + 2], out[n + 3] = 'REFRESHED', tonumber(state[2]), current
  end
  n = n + 3
end
return out
