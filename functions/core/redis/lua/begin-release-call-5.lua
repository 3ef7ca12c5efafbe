--[[
  beginReleaseCall: gpu-release's claim of the one runtime call a release attempt gets. Every duplicate, redelivered
  or concurrent gpu.release.requested of the same attempt finds the call taken (in flight, answered or failed) and
  calls nothing: real engines do not honour Idempotency-Key, so a second call could free memory a new allocation of
  the same id holds. Only when the holder's lease ran out (it crashed or stalled) may another delivery call again;
  a newer attempt of the same incarnation (the watchdog's) waits for an unexpired lease too, so two calls for one
  allocation never run at once.
  What to call is decided as releaseTarget decides it: the runtime stored here, only while this very attempt is
  pending.

  KEYS[1] session record   KEYS[2] bucket migrations   KEYS[3] bucket placements
  KEYS[4] the session's release calls (HASH `<incarnation>` -> `<token>|calling|<lease until ms>`,
          `<token>|answered|<freed bytes>[e]` (e: the figure is an estimate) or `<token>|failed|`; expires an hour
          after its last change)
  KEYS[5] bucket quiet hash (includes/quiet.lua): the record while it is quiet
  ARGV[1] session id   ARGV[2] incarnation   ARGV[3] the release token the request carries   ARGV[4] now (ms)
  ARGV[5] lease (ms): how long the call (retries included) may take before another delivery may call again
  ARGV[6] how long a refusal for good blocks a migration's release (ms): its token never changes, so after this long
          the watchdog's re-request may call again

  Returns one of:
    {'CALL', kind, node, runtimeUrl, attempt, engineAddress}
                                                this delivery calls the runtime (kind: 'destroy' | 'migration');
                                                engineAddress: the allocation's `<slot>/<engineSessionId>`, or ''
    {'IN_FLIGHT', leaseUntil}                   another delivery is calling for this allocation
    {'ANSWERED', freedBytes, node, estimated}   the runtime confirmed it already: report it again, call nothing
                                                (estimated: 1 when the figure was an estimate)
    {'FAILED'}                                  the runtime refused this attempt for good; a new attempt may call
    {'NOT_PENDING', why}                        as releaseTarget: nothing of this attempt waits for a call
]]
-- @include "session"
-- @include "quiet"
local sessionKey, migrationsKey, placementsKey, callsKey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
materialize(sessionKey, KEYS[5]) -- a quiet record (includes/quiet.lua) becomes a hash of its own first
local sessionId, inc, token, now, lease = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local failedBlocksMs = tonumber(ARGV[6] or '') or 0
local CALL_RECORD_TTL_MS = 3600000

local standing, state, matches = releaseStanding(sessionKey, migrationsKey, sessionId, inc, token)
local kind, pid, attempt, address
if standing == 'migration' then
  if not matches then return { 'NOT_PENDING', 'token_mismatch' } end
  kind, pid, attempt, address = 'migration', state.pid, 0, state.ea
else
  if standing ~= 'pending' then return { 'NOT_PENDING', standing } end
  if not matches then return { 'NOT_PENDING', 'token_mismatch' } end
  kind, pid, attempt = 'destroy', state[4], tonumber(state[6] or '0')
  address = redis.call('HGET', sessionKey, 'ea') or ''
end
local node, url = placementOf(placementsKey, pid)

local call = redis.call('HGET', callsKey, tostring(inc))
if call then
  local callToken, outcome, value = string.match(call, '^([^|]*)|([^|]*)|(.*)$')
  if outcome == 'calling' and tonumber(value) > now then return { 'IN_FLIGHT', tonumber(value) } end
  if callToken == token then
    if outcome == 'answered' then
      local bytes, estimated = string.match(value, '^(%d+)(e?)$')
      return { 'ANSWERED', tonumber(bytes), node, estimated == 'e' and 1 or 0 }
    end
    if outcome == 'failed' and (kind ~= 'migration' or now - (tonumber(value) or 0) < failedBlocksMs) then return { 'FAILED' } end
  end
end
redis.call('HSET', callsKey, tostring(inc), token .. '|calling|' .. (now + lease))
redis.call('PEXPIRE', callsKey, CALL_RECORD_TTL_MS)
return { 'CALL', kind, node, url, attempt, address }
