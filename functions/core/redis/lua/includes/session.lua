-- Shared helpers of the session scripts (inlined by the loader where a script says `-- @include "session"`).
--
-- Session record (HASH, one per session id; fields are short because a million of them are kept; a record holding
-- only what its open wrote may instead be quiet, packed in its bucket's quiet hash: includes/quiet.lua):
--   s   state: A active, D destroying, X destroyed (tombstone, expires after TOMBSTONE_TTL_MS)
--   i   incarnation (fencing token; unique per bucket and increasing, so never reused by a reopened id, and never below
--       Redis's clock in ms when it was handed out, so a Redis that lost its data does not hand out one again)
--   w   liveness window ms (heartbeatIntervalMs x missedBeats)
--   p   placement id (interned in the bucket's placements hash)
--   g   GPU bytes registered for this incarnation's allocation
--   od  live-from time of the opened that set this incarnation, as an offset from the incarnation (ms; the
--       incarnation is drawn from the clock at that open, so the offset is a few digits where the time is thirteen:
--       it takes the record's listpack from 96 to 80 bytes). Records written before keep it absolute, as `o`; readers
--       take either (openedFrom), and a migration rewrites it as `od`. (A replica still running the previous
--       open-session fails on a record without `o` when the session moves: answered 5xx, redelivered after the rollout.)
--   f   fingerprint of the session.opened that opened this incarnation
--   h   hold until (ms), while a hold was granted          tn, m   tenant, model (optional)
--   r   recent event fingerprints (space separated, newest last, at most RING_SIZE) for idempotence
--   c   cause of the destroy      xc  further causes seen after the claim (comma separated)
--   st  destroy stage              tl  timeline "stage@ms,stage@ms,..."
--   ca  destroy claimed at (ms)   ga  GPU release attempt    gr  bytes the runtime confirmed freed
--   t   destroy completed at (ms)      ro  live-from of the opened that reopened this id (only after a reopen)
--   gt  token of the current GPU release attempt (drawn by the requester; only an answer echoing it is booked)
--   ct  when the cause `c` was triggered (ms, by event time): a trigger sent earlier, learnt later, takes its place
--   pc, pt  an end seen before this incarnation's open (its cause and send time): the deadline engine claims the
--       session at once under that cause (and sets pe, so its session.expired is not taken as a further cause)
--   rf  when the destroy gave up its GPU release (ms; after RELEASE_MAX_ATTEMPTS attempts): it waits for an operator
--   gb  the attempt the release budget counts from (an operator's retry restarts it; attempts keep their numbers)
--   dm  offload stage of demote before destroy: demoting, demoted or restoring (absent: the KV is on the GPU)
--   dk  token of the pending demote or restore request   dq  when the offload stage last changed (ms)
--   ob  bytes of KV the runtime keeps off the GPU for it (booked by a demote, given back by a restore or release)
--   dg  GPU bytes the last demote freed   dc  demotes booked   dx  when a demote was refused for good (never again)
--
-- Ownership: a session opened with a tenant (tn) belongs to it; the scripts that apply the pipeline's events are
-- sent the tenant the event names ('' for none) and refuse (NOT_OWNER) an event whose tenant is not the session's.
-- The tenant stays in the tombstone, so a late event of the owner is still told apart from a foreign one.
local RING_SIZE = 16
-- A migration's pending release in the destroy watchdog: '!m:<id>:<incarnation>'. No session id starts with '!'
-- (they start with a letter or digit), so no session can be mistaken for a migration, nor one for a session.
local MIGRATION_MEMBER_PREFIX = '!m:'

-- The record's `od` for an open at `liveFrom` that set incarnation `inc` (see the record's fields above).
local function openedOffset(liveFrom, inc)
  return string.format('%d', liveFrom - tonumber(inc))
end

-- When the opened that set the incarnation was live, from the record's `o` (written before `od` existed) or `od`.
local function openedFrom(o, od, inc)
  if o then return tonumber(o) end
  return tonumber(inc) + tonumber(od or '0')
end

-- Whether an event naming `tenant` ('' for none) may act on a session whose record holds `tn` (nil for none).
local function owns(tn, tenant)
  return (tn or '') == tenant
end

-- A migration's entry in the bucket's migrations hash: '<pid>|<bytes>|<token>'.
-- A migration entry: `pid|bytes|token`, and `|engineAddress` (the old allocation's slot / engine session id, see
-- openSession's ARGV[12]) when it had one.
local function parseMigration(entry)
  local a = string.find(entry, '|', 1, true)
  local b = string.find(entry, '|', a + 1, true)
  if not b then return string.sub(entry, 1, a - 1), tonumber(string.sub(entry, a + 1)), '', '' end
  local c = string.find(entry, '|', b + 1, true)
  if not c then return string.sub(entry, 1, a - 1), tonumber(string.sub(entry, a + 1, b - 1)), string.sub(entry, b + 1), '' end
  return string.sub(entry, 1, a - 1), tonumber(string.sub(entry, a + 1, b - 1)), string.sub(entry, b + 1, c - 1), string.sub(entry, c + 1)
end
local STAGE_ORDER = { claimed = 1, gpu_release_requested = 2, gpu_released = 3, state_purged = 4, completed = 5 }

-- Where the release a gpu.release.requested or an answer to it names stands, for incarnation `inc` carrying `token`
-- (what releaseTarget and recordRelease both decide on). Returns standing, what the caller needs, and whether the
-- token is the one the pending (or booked) release was requested under:
--   'migration', {pid, bytes, ea}, matches the allocation a migration left behind waits for its release (ea: its
--                                         engine address, '' when none)
--   'unknown' | 'stale' | 'live', state   nothing of that incarnation is being destroyed
--   'released' | 'not_requested' | 'pending', state, matches
--                                         a destroy of it, past its release, before the request, or waiting for it
-- state: the record's HMGET s, i, st, p, g, ga, gt.
local function releaseStanding(sessionKey, migrationsKey, sessionId, inc, token)
  local migration = redis.call('HGET', migrationsKey, sessionId .. ':' .. inc)
  if migration then
    local pid, bytes, expected, ea = parseMigration(migration)
    return 'migration', { pid = pid, bytes = bytes, ea = ea }, token ~= '' and token == expected
  end
  local state = redis.call('HMGET', sessionKey, 's', 'i', 'st', 'p', 'g', 'ga', 'gt')
  if not state[1] then return 'unknown', state, false end
  if tonumber(state[2]) ~= inc then return 'stale', state, false end
  if state[1] == 'A' then return 'live', state, false end
  local matches = token ~= '' and token == state[7]
  if state[1] == 'X' or STAGE_ORDER[state[3]] >= STAGE_ORDER.gpu_released then return 'released', state, matches end
  if state[3] ~= 'gpu_release_requested' then return 'not_requested', state, matches end
  return 'pending', state, matches
end

-- The next incarnation of a bucket: one more than the last, and at least Redis's clock in ms. Should Redis lose its
-- data (a crash between fsyncs, a failover to a lagging replica), the counter starts again from the clock, above
-- every incarnation handed out before, so a fencing token (and the runtime's Idempotency-Key) is never reused. The
-- counter only runs ahead of the clock while a bucket opens more than one session per ms. 13 digits: Lua prints it
-- exactly (it prints numbers with 14 significant digits).
local function nextIncarnation(metaKey)
  local inc = redis.call('HINCRBY', metaKey, 'inc', 1)
  local t = redis.call('TIME')
  local floor = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if inc >= floor then return inc end
  redis.call('HSET', metaKey, 'inc', string.format('%d', floor))
  return floor
end

local function seen(sessionKey, fingerprint)
  if fingerprint == '' then return false end
  local ring = redis.call('HGET', sessionKey, 'r')
  if not ring then return false end
  return string.find(' ' .. ring .. ' ', ' ' .. fingerprint .. ' ', 1, true) ~= nil
end

local function remember(sessionKey, fingerprint)
  if fingerprint == '' then return end
  local ring = redis.call('HGET', sessionKey, 'r')
  local items = {}
  if ring then for item in string.gmatch(ring, '%S+') do items[#items + 1] = item end end
  items[#items + 1] = fingerprint
  while #items > RING_SIZE do table.remove(items, 1) end
  redis.call('HSET', sessionKey, 'r', table.concat(items, ' '))
end

local function placementId(placementsKey, metaKey, node, url)
  local lookup = 'key:' .. node .. '\n' .. url
  local pid = redis.call('HGET', placementsKey, lookup)
  if pid then return pid end
  pid = tostring(redis.call('HINCRBY', metaKey, 'pid', 1))
  -- Counted from its interning (n:<pid>), so placementRef may forget it with its last allocation.
  redis.call('HSET', placementsKey, lookup, pid, 'id:' .. pid, cjson.encode({ node, url }), 'n:' .. pid, 0)
  return pid
end

-- Counts the allocations that name an interned placement (`n:<pid>`: a session's incarnation from its open to its
-- completed destroy, a migration's old allocation until its release is booked) and forgets the placement with the
-- last of them, so the placements hash holds only placements in use, however many nodes come and go. A placement
-- interned before counting began (an upgrade) has no count: its allocations were never counted, so it is never
-- forgotten.
local function placementRef(placementsKey, pid, delta)
  if not pid or redis.call('HEXISTS', placementsKey, 'n:' .. pid) == 0 then return end
  local n = redis.call('HINCRBY', placementsKey, 'n:' .. pid, delta)
  if n > 0 then return end
  local raw = redis.call('HGET', placementsKey, 'id:' .. pid)
  if raw then
    local pair = cjson.decode(raw)
    redis.call('HDEL', placementsKey, 'key:' .. pair[1] .. '\n' .. pair[2])
  end
  redis.call('HDEL', placementsKey, 'id:' .. pid, 'n:' .. pid)
end

-- Returns node, runtimeUrl of an interned placement ('' , '' if unknown).
local function placementOf(placementsKey, pid)
  if not pid then return '', '' end
  local raw = redis.call('HGET', placementsKey, 'id:' .. pid)
  if not raw then return '', '' end
  local pair = cjson.decode(raw)
  return pair[1], pair[2]
end

local function ledgerRegister(ledgerKey, node, bytes)
  redis.call('HINCRBY', ledgerKey, 'reg:' .. node, bytes)
  redis.call('HINCRBY', ledgerKey, 'held:' .. node, bytes)
  redis.call('HINCRBY', ledgerKey, 'allocs:' .. node, 1)
end

-- `estimated`: the runtime's freed figure is an estimate (an engine that returns none: SGLang, vLLM); it is counted
-- in confirmed like any other, and apart in estimated / estimatedBytes so an audit can tell measured from guessed.
local function ledgerRelease(ledgerKey, node, bytes, confirmed, estimated)
  redis.call('HINCRBY', ledgerKey, 'rel:' .. node, bytes)
  redis.call('HINCRBY', ledgerKey, 'held:' .. node, -bytes)
  redis.call('HINCRBY', ledgerKey, 'frees:' .. node, 1)
  redis.call('HINCRBY', ledgerKey, 'confirmed:' .. node, confirmed)
  if estimated then
    redis.call('HINCRBY', ledgerKey, 'estimated:' .. node, 1)
    redis.call('HINCRBY', ledgerKey, 'estimatedBytes:' .. node, confirmed)
  end
end

-- Demote before destroy: the KV a demote kept off the GPU for this incarnation (`ob`) is gone with its allocation
-- (its release, an operator's resolve, a migration): offloaded:<node> stops counting it, once.
local function dropOffloaded(sessionKey, ledgerKey, node)
  local offloaded = tonumber(redis.call('HGET', sessionKey, 'ob') or '0') or 0
  if offloaded > 0 then redis.call('HINCRBY', ledgerKey, 'offloaded:' .. node, -offloaded) end
  redis.call('HDEL', sessionKey, 'ob')
end

local function appendTimeline(sessionKey, stage, now)
  local tl = redis.call('HGET', sessionKey, 'tl')
  local entry = stage .. '@' .. now
  redis.call('HSET', sessionKey, 'tl', tl and (tl .. ',' .. entry) or entry)
end

-- ACTIVE -> DESTROYING(claimed): leaves the deadline index, enters the stall watchdog. `causeAt`: when the cause was
-- triggered (by event time), so a trigger sent earlier but delivered later can take its place.
local function claim(sessionKey, deadlinesKey, destroyingKey, sessionId, cause, now, causeAt)
  redis.call('HSET', sessionKey, 's', 'D', 'c', cause, 'ct', causeAt, 'st', 'claimed', 'ca', now, 'tl', 'claimed@' .. now)
  redis.call('ZREM', deadlinesKey, sessionId)
  redis.call('ZADD', destroyingKey, now, sessionId)
end

-- The claim the deadline engine makes of a due session: under the end seen before its open, if there was one (pc,
-- pt), else as expired at its deadline.
local function claimDueSession(sessionKey, deadlinesKey, destroyingKey, sessionId, now, deadline, pendingCause, pendingAt)
  if pendingCause then
    claim(sessionKey, deadlinesKey, destroyingKey, sessionId, pendingCause, now, tonumber(pendingAt) or deadline)
    redis.call('HDEL', sessionKey, 'pc', 'pt')
    -- pe: the engine's own session.expired for this claim is its mechanism, not a further cause.
    redis.call('HSET', sessionKey, 'pe', 1)
  else
    claim(sessionKey, deadlinesKey, destroyingKey, sessionId, 'expired', now, deadline)
  end
end

-- Leaves (or adds to) the end marker of a session not opened yet: one field per tenant ('t:' .. tenant) holding the
-- earliest and the latest end by send time, 'cause|at|cause|at', so another tenant's end never hides the owner's,
-- and an open is ended by the earliest end sent after it (or else the latest).
local function markEnd(markerKey, cause, sentAt, tenant, ttl)
  local field = 't:' .. tenant
  local raw = redis.call('HGET', markerKey, field)
  local c1, a1, c2, a2 = cause, sentAt, cause, sentAt
  if raw then
    local ec, ea, lc, la = string.match(raw, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
    if tonumber(ea) <= sentAt then c1, a1 = ec, tonumber(ea) end
    if tonumber(la) >= sentAt then c2, a2 = lc, tonumber(la) end
  end
  redis.call('HSET', markerKey, field, c1 .. '|' .. string.format('%d', a1) .. '|' .. c2 .. '|' .. string.format('%d', a2))
  redis.call('PEXPIRE', markerKey, ttl)
end

-- The end an open sent at `liveFrom` by `tenant` was ended by, if the marker holds one sent at or after it: its cause
-- and send time (the earliest such). Ends sent before it ended an older incarnation; the tenant's entry goes either way.
local function endOfOpen(markerKey, tenant, liveFrom)
  local field = 't:' .. tenant
  local raw = redis.call('HGET', markerKey, field)
  if not raw then return nil end
  redis.call('HDEL', markerKey, field)
  local ec, ea, lc, la = string.match(raw, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  if tonumber(ea) >= liveFrom then return ec, tonumber(ea) end
  if tonumber(la) >= liveFrom then return lc, tonumber(la) end
  return nil
end
