--[[
  settleOffloadCall: what came of a demote or restore call beginOffloadCall handed out, booked once: only the holder
  of the call (its token) settles it, and the booking is made in the same step as the call record, so a redelivery
  finds the answer and books nothing again.
    demote answered: the session keeps `ob` offloaded bytes and `dg` GPU bytes freed; the ledger counts
                     offloaded:<node> (bytes now kept off the GPU), demotes:<node> and demoteFreed:<node>. Booked even
                     if a restore or a destroy overtook the stage meanwhile: the runtime did demote, and the restore
                     or the release that follows undoes what is booked here.
    restore answered: offloaded:<node> gives back the session's `ob`; restores:<node> and restored:<node> count it.
    failed (refused for good): a demote is not asked again in this incarnation (`dx`); a restore leaves the session
                     demoted (a later user turn asks again), or resident when nothing was offloaded.
    retry: the call is released, for the Broker's redelivery to call again.

  KEYS[1] session record   KEYS[2] the session's release calls   KEYS[3] bucket GPU ledger   KEYS[4] bucket placements
  KEYS[5] bucket quiet hash (includes/quiet.lua): the record while it is quiet
  ARGV[1] session id   ARGV[2] incarnation   ARGV[3] 'demote' | 'restore'   ARGV[4] token
  ARGV[5] outcome: 'answered' | 'failed' | 'retry'   ARGV[6] now (ms)
  ARGV[7] answered: bytes offloaded (demote) or restored (restore)   ARGV[8] answered demote: GPU bytes freed
  ARGV[9] '1' when the figures are estimates (kept in the call record, so a redelivery reports them as such)

  Returns one of:
    {'SETTLED', booked}   booked: 1 when the ledger changed (0: the incarnation is gone, or nothing to book)
    {'NOT_HOLDER'}        the call record is another call's (or gone): nothing changes
]]
-- @include "session"
-- @include "quiet"
local sessionKey, callsKey, ledgerKey, placementsKey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
materialize(sessionKey, KEYS[5]) -- a quiet record (includes/quiet.lua) becomes a hash of its own first
local inc, op, token, outcome, now = tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local bytes, freed, estimated = tonumber(ARGV[7] or '0') or 0, tonumber(ARGV[8] or '0') or 0, ARGV[9] == '1'
local CALL_RECORD_TTL_MS = 3600000
local STAGE_OF = { demote = 'demoting', restore = 'restoring' }

local call = redis.call('HGET', callsKey, tostring(inc))
if not call or string.sub(call, 1, #token + 1) ~= token .. '|' then return { 'NOT_HOLDER' } end
if outcome == 'retry' then
  redis.call('HDEL', callsKey, tostring(inc))
  return { 'SETTLED', 0 }
end
if outcome ~= 'answered' and outcome ~= 'failed' then return redis.error_reply('ERR unknown outcome ' .. outcome) end
local answer = outcome == 'answered' and (bytes .. ':' .. freed .. (estimated and 'e' or '')) or tostring(now)
redis.call('HSET', callsKey, tostring(inc), token .. '|' .. outcome .. '|' .. answer)
redis.call('PEXPIRE', callsKey, CALL_RECORD_TTL_MS)

local rec = redis.call('HMGET', sessionKey, 's', 'i', 'p', 'dm', 'dk', 'ob')
if not rec[1] or tonumber(rec[2]) ~= inc then return { 'SETTLED', 0 } end
local current = rec[5] == token and rec[4] == STAGE_OF[op]
local node = placementOf(placementsKey, rec[3])
if outcome == 'failed' then
  if op == 'demote' then
    redis.call('HSET', sessionKey, 'dx', now)
    if current then redis.call('HDEL', sessionKey, 'dm', 'dk') end
  elseif current then
    if rec[6] then redis.call('HSET', sessionKey, 'dm', 'demoted') else redis.call('HDEL', sessionKey, 'dm', 'dk') end
  end
  redis.call('HSET', sessionKey, 'dq', now)
  return { 'SETTLED', 0 }
end
if op == 'demote' then
  -- A second demote of one incarnation (restored in between) replaces what is kept: the first one's copy was given
  -- back by its restore, so ob is never counted twice.
  redis.call('HSET', sessionKey, 'ob', bytes, 'dg', freed, 'dq', now)
  redis.call('HINCRBY', sessionKey, 'dc', 1)
  -- The stage says where the KV is: demoted, unless a restore already waits for it (it then restores this copy).
  if rec[4] ~= 'restoring' then redis.call('HSET', sessionKey, 'dm', 'demoted', 'dk', token) end
  redis.call('HINCRBY', ledgerKey, 'offloaded:' .. node, bytes)
  redis.call('HINCRBY', ledgerKey, 'demotes:' .. node, 1)
  redis.call('HINCRBY', ledgerKey, 'demoteFreed:' .. node, freed)
  return { 'SETTLED', 1 }
end
local held = tonumber(rec[6] or '0') or 0
redis.call('HDEL', sessionKey, 'ob')
redis.call('HSET', sessionKey, 'dq', now)
if current then redis.call('HDEL', sessionKey, 'dm', 'dk') end
-- A restore called with nothing booked (a demote whose caller died mid-call) restores what the runtime may hold, but
-- books no restore: the ledger never counted that demote.
if held <= 0 then return { 'SETTLED', 0 } end
redis.call('HINCRBY', ledgerKey, 'offloaded:' .. node, -held)
redis.call('HINCRBY', ledgerKey, 'restores:' .. node, 1)
redis.call('HINCRBY', ledgerKey, 'restored:' .. node, bytes)
return { 'SETTLED', 1 }
