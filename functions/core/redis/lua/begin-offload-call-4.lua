--[[
  beginOffloadCall: gpu-release's claim of the one runtime call a demote or restore request gets, as beginReleaseCall
  is for a release, and in the same per-incarnation call record: a demote, a restore and a release of one allocation
  never run at once (a destroy's release waits for a demote in flight, and the other way round), and a duplicate or
  redelivered request calls nothing while its call is in flight or after it was answered. What to call is the runtime
  stored here, never one the event names, and only while the session is live and this very request is its pending
  offload stage.

  KEYS[1] session record   KEYS[2] bucket placements   KEYS[3] the session's release calls (HASH, see
          begin-release-call-5.lua; an offload call's answer is `<token>|answered|<bytes>:<bytes>[e]`)
  KEYS[4] bucket quiet hash (includes/quiet.lua): the record while it is quiet
  ARGV[1] session id   ARGV[2] incarnation   ARGV[3] 'demote' | 'restore'   ARGV[4] the request's token
  ARGV[5] now (ms)   ARGV[6] lease (ms): how long the call may take before another delivery may call again

  Returns one of:
    {'CALL', node, runtimeUrl, engineAddress}   this delivery calls the runtime
    {'IN_FLIGHT', leaseUntil}                   a call for this allocation (any kind) is in flight elsewhere
    {'ANSWERED', answer}                        this request's call was answered already: report it again
    {'FAILED'}                                  this request's call was refused for good
    {'NOTHING'}                                 a restore with nothing to bring back: the demote it overtook was
                                                never made, or was refused; the session is resident again
    {'NOT_PENDING', why}                        'unknown', 'stale', 'ended', 'superseded' (another request is the
                                                pending one, or none is) or 'held' (a demote called off by a hold)
]]
-- @include "session"
-- @include "quiet"
local sessionKey, placementsKey, callsKey = KEYS[1], KEYS[2], KEYS[3]
materialize(sessionKey, KEYS[4]) -- a quiet record (includes/quiet.lua) becomes a hash of its own first
local inc, op, token, now, lease = tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local CALL_RECORD_TTL_MS = 3600000
local STAGE_OF = { demote = 'demoting', restore = 'restoring' }

local rec = redis.call('HMGET', sessionKey, 's', 'i', 'p', 'ea', 'dm', 'dk', 'ob', 'h')
if not rec[1] then return { 'NOT_PENDING', 'unknown' } end
if tonumber(rec[2]) ~= inc then return { 'NOT_PENDING', 'stale' } end

local call = redis.call('HGET', callsKey, tostring(inc))
local callToken, outcome, value
if call then callToken, outcome, value = string.match(call, '^([^|]*)|([^|]*)|(.*)$') end
-- The answer to this very request stands whatever happened since: it is reported again, never called twice.
if callToken == token and outcome == 'answered' then return { 'ANSWERED', value } end
if callToken == token and outcome == 'failed' then return { 'FAILED' } end
if rec[1] ~= 'A' then return { 'NOT_PENDING', 'ended' } end
if rec[6] ~= token or rec[5] ~= STAGE_OF[op] then return { 'NOT_PENDING', 'superseded' } end
if outcome == 'calling' and tonumber(value) > now then return { 'IN_FLIGHT', tonumber(value) } end
-- A hold granted since the demote was asked says the KV is about to be needed: the demote is called off.
if op == 'demote' and tonumber(rec[8] or '0') > now then
  redis.call('HDEL', sessionKey, 'dm', 'dk')
  redis.call('HSET', sessionKey, 'dq', now)
  return { 'NOT_PENDING', 'held' }
end
-- A restore that overtook a demote which never reached the runtime (or was refused) has nothing to bring back. A
-- demote call whose caller died mid-call (its lease ran out unanswered) may have happened: the restore is called.
if op == 'restore' and (tonumber(rec[7] or '0') or 0) <= 0 and outcome ~= 'calling' then
  redis.call('HDEL', sessionKey, 'dm', 'dk')
  redis.call('HSET', sessionKey, 'dq', now)
  return { 'NOTHING' }
end
redis.call('HSET', callsKey, tostring(inc), token .. '|calling|' .. (now + lease))
redis.call('PEXPIRE', callsKey, CALL_RECORD_TTL_MS)
local node, url = placementOf(placementsKey, rec[3])
return { 'CALL', node, url, rec[4] or '' }
