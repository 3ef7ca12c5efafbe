--[[
  settleOrphan: books the runtime's answer to the release of an allocation sightOrphan claimed, exactly once: only
  the pass holding the claim (its claimedAt) books, so a release that a retaken claim repeated (the runtime answers
  a repeat of the same Idempotency-Key with its stored answer) is not counted twice.

  KEYS[1] the orphan sighting   KEYS[2] bucket ledger (of the session's bucket)
  ARGV[1] claimedAt (what sightOrphan answered with DUE)   ARGV[2] outcome: 'released' (the runtime freed it),
  'gone' (it held nothing, or a newer incarnation: nothing to free) or 'failed' (try again at a later pass)
  ARGV[3] runtime name   ARGV[4] bytes the runtime freed

  Returns one of:
    {'BOOKED', firstSeen}   released: `orphans:<runtime>` +1 and `orphanBytes:<runtime>` +bytes; sighting dropped
    {'FORGOTTEN'}           gone: sighting dropped, nothing booked
    {'RETRY'}               failed: the claim lifted, the sighting kept for the next pass
    {'NOT_CLAIMED'}         the claim is not this pass's any more (expired, retaken or settled): nothing changed
]]
local sightingKey, ledgerKey = KEYS[1], KEYS[2]
local claimedAt, outcome, runtime, bytes = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])

local sighting = redis.call('HMGET', sightingKey, 'f', 'c')
if not sighting[2] or sighting[2] ~= claimedAt then return { 'NOT_CLAIMED' } end
if outcome == 'failed' then
  redis.call('HDEL', sightingKey, 'c')
  return { 'RETRY' }
end
redis.call('DEL', sightingKey)
if outcome ~= 'released' then return { 'FORGOTTEN' } end
redis.call('HINCRBY', ledgerKey, 'orphans:' .. runtime, 1)
redis.call('HINCRBY', ledgerKey, 'orphanBytes:' .. runtime, bytes)
return { 'BOOKED', tonumber(sighting[1]) }
