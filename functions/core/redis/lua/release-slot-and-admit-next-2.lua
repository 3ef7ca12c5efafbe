--[[
  releaseSlotAndAdmitNext: frees a member's slot on a GPU node (its release reported back, or will never) and, in
  the same step, hands every free slot to the oldest destroys waiting in the node's queue, so a freed slot is never
  left idle while a destroy waits and no two replicas hand out the same slot. Freeing a slot not held changes
  nothing but still fills free slots (a lease ran out). The caller continues the destroys it was handed.

  KEYS[1] the node's in-flight GPU releases (ZSET member '<sessionId>:<incarnation>' -> lease expiry, ms)
  KEYS[2] the node's waiting destroys (ZSET member -> first enqueued at, ms)
  ARGV[1] member   ARGV[2] now (ms)   ARGV[3] lease (ms)   ARGV[4] most releases the node may have in flight

  Returns one of:
    {'FREED', inFlight, admitted, waited, ...}     the member's slot was freed; `admitted` now hold a slot, oldest
                                                  first, each followed by how long it waited in the queue (ms)
    {'NOT_HELD', inFlight, admitted, waited, ...}  the member held no live slot; `admitted` as above
  inFlight counts the slots held afterwards, the admitted included.
]]
-- @include "release-slots"
local inflight, waiting = KEYS[1], KEYS[2]
local member, now, lease, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])

local held = redis.call('ZSCORE', inflight, member)
redis.call('ZREM', inflight, member)
-- A member freeing its slot is waiting no more (it cannot be both; this keeps a stray entry from lingering).
redis.call('ZREM', waiting, member)
local freed = held and tonumber(held) > now
local inFlight = purge_expired(inflight, now)
local admitted, waited = admit_oldest(inflight, waiting, limit - inFlight, now, lease)
expire_slot_keys(inflight, waiting, now, lease)
return { freed and 'FREED' or 'NOT_HELD', inFlight + #admitted, unpack(with_waits(admitted, waited, nil)) }
