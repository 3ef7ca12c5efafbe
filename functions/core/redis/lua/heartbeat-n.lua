--[[
  heartbeat: session.heartbeats applied in one call, in groups of one bucket each (a batch of one is the common case;
  under load the caller groups concurrent heartbeats, which is what lets one Redis take 100k heartbeats/s). Each
  pushes its session's deadline to live-from + window, never earlier than it already is, so a duplicate or a
  redelivered older heartbeat changes nothing (max() is idempotent).

  On a single Redis one call carries the heartbeats of every bucket the caller has pending: the call itself, not the
  sessions in it, was most of a heartbeat's cost when a batch spreads over the buckets (a heartbeat-timeout replica's
  turn holds a few heartbeats of many buckets). On Redis Cluster a script's keys must share one slot, so a call
  carries one bucket's group (the caller groups so), and this script is otherwise the same.

  For each group it also notes, for the outage rule (includes/blind.lua), that the bucket's heartbeats are heard: when
  the last call was (`hb`) and the running mean gap between calls (`hg`), from which the deadline engine tells a
  silence of the ingest path (the Broker or heartbeat-timeout down) from the fleet's ordinary quiet
  (functions/heartbeat-timeout/ingest-silence.ts). Only a group whose caller asks reads and writes them (each caller
  asks at most once per bucket in HEARD_MARK_MS, session-store.ts): at bench:compare's asked rate that read was a
  sixteenth of Redis's instructions per heartbeat, for marks a busy bucket writes at most 20 times a second anyway.

  The call is the hottest there is, so it is shaped for cost (bench:compare's CPU per heartbeat): a group's session
  ids travel as one argument and their ages as another (per-argument handling was most of the caller's CPU and a
  good part of Redis's), each group's deadlines are moved by ONE ZADD (per 1,000 sessions), and the reply is numbers
  only.

  KEYS (three per group, the caller says how many): per group g, in order (KEYS[1] to KEYS[3] for the first):
    KEYS[3g-2] the bucket's deadline index (ZSET)   KEYS[3g-1] the bucket's watch (HASH)
    KEYS[3g] the bucket's quiet hash (includes/quiet.lua): its quiet records, read first for the whole group
  ARGV[1] now (ms)
  ARGV[2] '1' on Redis Cluster, else '0': what an indexed session without a record here means (see below)
  then per group g, in order (4 arguments each, from ARGV[3]):
    the bucket's session record key prefix (`<prefix>:{<bucket>}:s:`): a record's key is the prefix and its session
      id, built here rather than sent, because a third of the call's bytes were those keys; they carry the bucket's
      hash tag, so on Redis Cluster they live in the group's slot
    the session ids of the group's heartbeats, separated by single spaces (ids never contain one: SESSION_ID_PATTERN)
    their ages, in the same order, separated by single spaces: now − live-from in ms, ≥ 0 (the event's time, capped
      at now)
    '1' to note the bucket's heartbeats heard (`hb`, `hg`), '' to leave the marks alone
  then, only when a heartbeat of the call names a tenant: the tenant each names, one argument per heartbeat in the
    call's order ('' for none)

  Returns a flat array of numbers, two per heartbeat, in the call's order (or an error, see below); a quiet record's
  incarnation comes as its digits (a bulk string), every other value as an integer:
    incarnation, deadline        REFRESHED: the session's deadline after the call (ms, > 0)
    0, -1                        UNKNOWN: no such session (never opened, or its tombstone expired)
    incarnation, -2              NOT_OWNER: the session belongs to another tenant; its deadline is not moved
    incarnation, -3              ENDED, destroying (D; or an end already seen, see pc): a late heartbeat never revives it
    incarnation, -4              ENDED, destroyed (X)
    incarnation or 0, -5         UNREADABLE: the record has no numeric incarnation (or, live, no numeric window); nothing
                                 of it is changed, and the call's other heartbeats are answered as usual
  A malformed call (key triples, ids and ages, tenants; several groups on Cluster) is refused whole, before any write.
]]
-- @include "quiet"
local call, tonumber = redis.call, tonumber
local now, cluster = tonumber(ARGV[1]), ARGV[2] == '1'
local groups = #KEYS / 3
if groups < 1 or groups ~= math.floor(groups) then return redis.error_reply('ERR heartbeat: ' .. #KEYS .. ' keys, expected triples') end
if cluster and groups > 1 then return redis.error_reply('ERR heartbeat: ' .. groups .. ' buckets in one call on Redis Cluster') end
local tenantBase = 2 + 4 * groups
if #ARGV < tenantBase then
  return redis.error_reply('ERR heartbeat: ' .. #ARGV .. ' arguments for ' .. groups .. ' groups, expected at least ' .. tenantBase)
end
local tenants = #ARGV > tenantBase
-- Text to number: Lua's tonumber() is C's strtod, among the costliest steps of a heartbeat in instructions (npm run
-- bench:instructions counts them). A call's ages and its quiet records' windows take few distinct values, so each is
-- converted once a call; a quiet record's incarnation is not converted at all (answered as its digits).
local numbers = {}
local function number(text)
  local v = numbers[text]
  if v == nil then
    v = tonumber(text)
    if v ~= nil then numbers[text] = v end
  end
  return v
end
local work, total = {}, 0
for g = 1, groups do
  local ids, ages = {}, {}
  for id in string.gmatch(ARGV[4 * g], '[^ ]+') do ids[#ids + 1] = id end
  for age in string.gmatch(ARGV[4 * g + 1], '[^ ]+') do ages[#ages + 1] = number(age) end
  if #ids ~= #ages or #ids == 0 then
    return redis.error_reply('ERR heartbeat: group ' .. g .. ' has ' .. #ids .. ' session ids and ' .. #ages .. ' ages')
  end
  work[g], total = { ids = ids, ages = ages, first = total }, total + #ids
end
if tenants and #ARGV - tenantBase ~= total then
  return redis.error_reply('ERR heartbeat: ' .. total .. ' heartbeats and ' .. (#ARGV - tenantBase) .. ' tenants')
end

-- Two passes, so that nothing is written unless the whole call goes through (Redis does not undo a script's writes
-- when it fails halfway): first every record is read and every answer decided, then the deadlines and marks are
-- written. A record that cannot be read as a session's answers on its own (-5), not for the call.
local out = {}
for g = 1, groups do
  local deadlinesKey, quietKey, recordPrefix, w = KEYS[3 * g - 2], KEYS[3 * g], ARGV[4 * g - 1], work[g]
  local ids, ages, first = w.ids, w.ages, w.first
  -- The sessions to refresh: ZADD score, member pairs (the j-th at 2j - 1, 2j) and where each one's reply goes.
  local zadd, slots, moving = {}, {}, 0
  -- Quiet records (includes/quiet.lua) of the whole group in one read; a session without one has a record of its own.
  local quiet = {}
  for from = 1, #ids, 1000 do
    local upto = math.min(from + 999, #ids)
    local packed = call('HMGET', quietKey, unpack(ids, from, upto))
    for k = from, upto do quiet[k] = packed[k - from + 1] end
  end
  for k = 1, #ids do
    local sessionId, n = ids[k], 2 * (first + k - 1)
    local s, inc, window, tenant, pc
    local packed = quiet[k]
    if packed then
      -- A quiet record is ACTIVE with no end seen (only such records are quiet).
      -- Its incarnation stays the digits it is stored as (answered as they are), its window a number.
      s, pc = 'A', false
      local windowText
      inc, windowText, tenant = quietHeartbeatState(packed)
      window = windowText and number(windowText)
    else
      local state = call('HMGET', recordPrefix .. sessionId, 's', 'i', 'w', 'tn', 'pc')
      s, inc, window, tenant, pc = state[1], tonumber(state[2]), tonumber(state[3]), state[4], state[5]
    end
    if not s then
      -- Indexed but no record here. On Redis Cluster, while a resharding moves the bucket's slot: on the node the
      -- slot is leaving, reading a record already moved fails the script before it writes anything (Redis's "non
      -- local key" error: src/script.c, scriptVerifyClusterState), so the call fails and the caller answers 5xx; on
      -- the node it is arriving at (reached through ASK), a record not moved yet reads as absent, and the script
      -- answers TRYAGAIN itself (ioredis retries it, and else the caller answers 5xx): a heartbeat must never be
      -- dropped as UNKNOWN for it. A call on Cluster carries one group, and nothing has been written yet, so the retry
      -- applies the whole call once. (A stray entry on Cluster is answered TRYAGAIN too, until the deadline engine
      -- removes it at its deadline; no heartbeat moves it.)
      -- On a single Redis nothing moves: an indexed id without a record is a stray the deadline engine removes at
      -- its deadline, and its heartbeat is UNKNOWN, as it would be without the entry (refusing it would refuse the
      -- other buckets' heartbeats of the call with it).
      if cluster and call('ZSCORE', deadlinesKey, sessionId) then
        return redis.error_reply('TRYAGAIN session record ' .. recordPrefix .. sessionId .. ' is not on this node, its deadline is')
      end
      out[n + 1], out[n + 2] = 0, -1
    elseif not inc then
      out[n + 1], out[n + 2] = 0, -5
    elseif s ~= 'A' or pc then
      -- pc: an end sent after its open already arrived; it is due now, and a heartbeat sent before that end must not
      -- push it back.
      out[n + 1], out[n + 2] = inc, (s == 'X' and not pc) and -4 or -3
    elseif (tenant or '') ~= (tenants and ARGV[tenantBase + first + k] or '') then
      out[n + 1], out[n + 2] = inc, -2
    elseif not window then
      out[n + 1], out[n + 2] = inc, -5
    else
      local target = now - ages[k] + window
      out[n + 1], out[n + 2] = inc, target
      moving = moving + 1
      -- As text formatted as an integer: a Lua number passed to redis.call is formatted by Redis with %.17g (C's
      -- floating-point formatting), several times the instructions of an integer's.
      zadd[2 * moving - 1], zadd[2 * moving], slots[moving] = string.format('%d', target), sessionId, n + 2
    end
  end
  w.zadd, w.slots, w.moving = zadd, slots, moving
end

for g = 1, groups do
  local deadlinesKey, watchKey, w = KEYS[3 * g - 2], KEYS[3 * g - 1], work[g]
  local zadd, slots, moving = w.zadd, w.slots, w.moving
  -- max(current, target) for all at once: ZADD GT only ever raises a score, and CH counts the ones it changed, so the
  -- common case (every deadline moved out) needs no read; otherwise the scores it left are read back. (A session
  -- named twice in one group is answered the deadline the last of them left.) The ZADD goes in pieces of at most 1,000
  -- sessions: Lua's unpack() fails past a few thousand values (LUAI_MAXCSTACK), and a caller may send a group that
  -- large (heartbeatMany bounds a call at 256 heartbeats, but the script does not rely on it).
  local changed = 0
  for from = 1, moving, 1000 do
    local upto = math.min(from + 999, moving)
    changed = changed + call('ZADD', deadlinesKey, 'GT', 'CH', unpack(zadd, 2 * from - 1, 2 * upto))
  end
  if changed < moving then
    for from = 1, moving, 1000 do
      local upto, members = math.min(from + 999, moving), {}
      for j = from, upto do members[j - from + 1] = zadd[2 * j] end
      local scores = call('ZMSCORE', deadlinesKey, unpack(members))
      for j = from, upto do out[slots[j]] = tonumber(scores[j - from + 1]) end
    end
  end

  -- Heard: the time of this call, and a running mean of the gaps between calls (each gap capped at a minute, so an
  -- outage does not teach the bucket that silences are normal). Calls closer than 50 ms are one moment for this
  -- purpose (silences are judged in seconds), so a busy bucket writes the marks at most 20 times a second, not on
  -- every call. Replicas' clocks (each anchored to Redis TIME) differ by a few ms: never backwards.
  if ARGV[4 * g + 2] == '1' then
    local heard = call('HMGET', watchKey, 'hb', 'hg')
    local last, mean = tonumber(heard[1]), tonumber(heard[2])
    if not last then
      call('HSET', watchKey, 'hb', string.format('%d', now))
    elseif now - last >= 50 then
      local gap = math.min(now - last, 60000)
      mean = mean and (mean * 0.9 + gap * 0.1) or gap
      call('HSET', watchKey, 'hb', string.format('%d', now), 'hg', string.format('%.1f', mean))
    end
  end
end
return out
