-- Quiet records (inlined where a script says `-- @include "quiet"`).
--
-- A session that holds only what its open wrote (ACTIVE, no end seen before it) keeps its record packed in ONE field
-- of its bucket's quiet hash, `<prefix>:{<bucket>}:quiet`, instead of a hash of its own: field = session id, value =
-- `i w p g od f` (the record's fields of those names, space separated), then `\31<name>=<value>` for each of `tn`,
-- `m`, `ea` and `ro` it holds. A key of its own costs ~72 B (key, object, dictionary entry) before its fields; one
-- field of a shared hash costs its id and value and a dictionary entry (bench:compare at 1M: 278 -> 230 B a session
-- with its index entry), which is what brings a million heartbeating sessions under 250 B each (issue 16).
--
-- Only open-session writes a quiet record (only while SESSION_RECORD_PACKING is true), and only heartbeat-n and
-- held-session-owners read one as it is. Every
-- other script that names a session record first turns a quiet one back into the record's own hash (`materialize`,
-- the same fields, state A), then goes on exactly as before; so the quiet form is never written to, and a record is
-- in one place at a time: a session id is a field of its bucket's quiet hash or has a record key, never both.
-- Heartbeats leave a quiet record quiet (they move only the deadline index); anything else the session does (an
-- activity, a hold, its end) makes it a record of its own for the rest of its life, as records were before.
--
-- Every script that may read or write a quiet record declares the quiet hash among its KEYS (it carries the bucket's
-- hash tag), so on Redis Cluster a resharding that moved it answers ASK or TRYAGAIN before the script runs, as for any
-- declared key, rather than failing the script inside.
local QUIET_CORE = { 'i', 'w', 'p', 'g', 'od', 'f' }
local QUIET_EXTRAS = { 'tn', 'm', 'ea', 'ro' }
local QUIET_SEPARATOR = '\31'

-- The session id of a record key `<prefix>:{<bucket>}:s:<sessionId>` (the prefix holds no ':' and the tag no '}', so
-- the first '}:s:' ends the bucket's part; an id may hold ':').
local function recordIdOf(sessionKey)
  return string.match(sessionKey, '^[^}]*}%:s%:(.+)$')
end

-- The packed value of a record given as a table of its fields, or nil when the record cannot be quiet: a field other
-- than s (A), the core ones and the extras, a core field missing, or a value holding a separator.
local function packQuiet(fields)
  if fields.s ~= 'A' then return nil end
  local core, known = {}, { s = true }
  for k, name in ipairs(QUIET_CORE) do
    local v = fields[name]
    if not v or v == '' or string.find(v, '[ \31]') then return nil end
    core[k], known[name] = v, true
  end
  local packed = table.concat(core, ' ')
  for _, name in ipairs(QUIET_EXTRAS) do
    local v = fields[name]
    known[name] = true
    if v then
      if v == '' or string.find(v, QUIET_SEPARATOR, 1, true) then return nil end
      packed = packed .. QUIET_SEPARATOR .. name .. '=' .. v
    end
  end
  for name in pairs(fields) do
    if not known[name] then return nil end
  end
  return packed
end

-- The record's fields from a packed value, as HSET arguments (`s`, `A` first).
local function unpackQuiet(packed)
  local out, k = { 's', 'A' }, 0
  local cut = string.find(packed, QUIET_SEPARATOR, 1, true)
  for v in string.gmatch(cut and string.sub(packed, 1, cut - 1) or packed, '[^ ]+') do
    k = k + 1
    out[#out + 1], out[#out + 2] = QUIET_CORE[k], v
  end
  if cut then
    for extra in string.gmatch(string.sub(packed, cut + 1), '[^\31]+') do
      local eq = string.find(extra, '=', 1, true)
      out[#out + 1], out[#out + 2] = string.sub(extra, 1, eq - 1), string.sub(extra, eq + 1)
    end
  end
  return out
end

-- What a heartbeat checks, from a packed value: incarnation and window as their digits (nil unless digits: the caller
-- converts what it needs), tenant (nil for none).
local function quietHeartbeatState(packed)
  local inc, window = string.match(packed, '^(%d+) (%d+) ')
  local at, tenant = string.find(packed, '\31tn=', 1, true), nil
  if at then tenant = string.match(packed, '^[^\31]*', at + 4) end
  return inc, window, tenant
end

-- Turns a quiet record back into a hash of its own, so the script that names it reads and writes it as any record.
-- `quietKey` is the bucket's quiet hash, declared by the script (so Redis Cluster redirects it as any key). Returns
-- 'opened' when it was quiet, 'dropped' when a stale quiet field beside the record key was removed, else false. A
-- record key that exists wins: a quiet field beside it can only be stale (left by a replica that cannot read quiet
-- records, running beside one that packs), so it is dropped, never unpacked over the record; left, it would come back
-- as an ACTIVE record once the record's tombstone expired.
local function materialize(sessionKey, quietKey)
  local sessionId = recordIdOf(sessionKey)
  if redis.call('EXISTS', sessionKey) == 1 then
    return redis.call('HDEL', quietKey, sessionId) == 1 and 'dropped' or false
  end
  local packed = redis.call('HGET', quietKey, sessionId)
  if not packed then return false end
  redis.call('HSET', sessionKey, unpack(unpackQuiet(packed)))
  redis.call('HDEL', quietKey, sessionId)
  return 'opened'
end
