--[[
  settleReleaseCall: what came of the runtime call beginReleaseCall handed out, so later deliveries of the same
  attempt know: 'answered' (they report the stored answer), 'failed' (refused for good: they call nothing), or
  'retry' (a transient failure: the call is released, and the Broker's redelivery calls again). Only the holder of
  the attempt's token settles it; a newer attempt's call is never touched.

  KEYS[1] the session's release calls (HASH, see beginReleaseCall)
  ARGV[1] incarnation   ARGV[2] token   ARGV[3] outcome: 'answered' | 'failed' | 'retry'
  ARGV[4] freed bytes (answered; followed by 'e' when the figure is an estimate), or when it failed (ms; failed)

  Returns one of:
    {'SETTLED'}
    {'NOT_HOLDER'}   the call record is another attempt's (or gone): nothing changes
]]
local callsKey = KEYS[1]
local inc, token, outcome, freed = ARGV[1], ARGV[2], ARGV[3], ARGV[4] or ''
local CALL_RECORD_TTL_MS = 3600000

local call = redis.call('HGET', callsKey, inc)
if not call or string.sub(call, 1, #token + 1) ~= token .. '|' then return { 'NOT_HOLDER' } end
if outcome == 'retry' then
  redis.call('HDEL', callsKey, inc)
elseif outcome == 'answered' then
  redis.call('HSET', callsKey, inc, token .. '|answered|' .. freed)
  redis.call('PEXPIRE', callsKey, CALL_RECORD_TTL_MS)
elseif outcome == 'failed' then
  redis.call('HSET', callsKey, inc, token .. '|failed|' .. freed)
  redis.call('PEXPIRE', callsKey, CALL_RECORD_TTL_MS)
else
  return redis.error_reply('ERR unknown outcome ' .. outcome)
end
return { 'SETTLED' }
