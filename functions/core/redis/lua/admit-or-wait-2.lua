--[[
  admitOrWait: the storm guard's concurrency limit per GPU node, shared by every destroy-dispatch replica. A slot
  is a lease: a member of the node's in-flight set scored by the time its lease runs out, so the slot of a holder
  that crashed, or of a release whose outcome never came back, frees itself when the lease expires. Asking again
  for the same member renews its lease and never takes a second slot. A member refused a slot joins the node's
  wait queue (once: asking again keeps its place) instead of being turned away, and slots go to the oldest waiters
  first: a free slot found here (a lease ran out) is handed to the queue's head, this member among them if its turn
  has come, and the caller continues the others it was handed.

  KEYS[1] the node's in-flight GPU releases (ZSET member '<sessionId>:<incarnation>' -> lease expiry, ms)
  KEYS[2] the node's waiting destroys (ZSET member -> first enqueued at, ms)
  ARGV[1] member   ARGV[2] now (ms)   ARGV[3] lease (ms)   ARGV[4] most releases the node may have in flight

  Returns one of:
    {'ACQUIRED', inFlight, waited, other, otherWaited, ...}
                                        a new slot for the member, after `waited` ms in the queue (0: a slot was
                                        free); inFlight counts it; `other` are waiters handed a slot too (each
                                        followed by its wait, ms), whose destroys the caller must continue
    {'HELD', inFlight}                  the member held a live slot already; its lease now runs from now
    {'WAITING', position, waited, other, otherWaited, ...}
                                        every slot is taken: the member waits, `position` in the queue (1 = next),
                                        queued `waited` ms so far; `other` as above
]]
-- @include "release-slots"
local inflight, waiting = KEYS[1], KEYS[2]
local member, now, lease, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])

local inFlight = purge_expired(inflight, now)
if redis.call('ZSCORE', inflight, member) then
  redis.call('ZADD', inflight, now + lease, member)
  redis.call('ZREM', waiting, member)
  expire_slot_keys(inflight, waiting, now, lease)
  return { 'HELD', inFlight }
end

-- Behind the waiters already queued (or at the head of an empty queue), then the free slots go head first.
redis.call('ZADD', waiting, 'NX', now, member)
local admitted, waited = admit_oldest(inflight, waiting, limit - inFlight, now, lease)
expire_slot_keys(inflight, waiting, now, lease)
local others = with_waits(admitted, waited, member)
for i, m in ipairs(admitted) do
  if m == member then return { 'ACQUIRED', redis.call('ZCARD', inflight), waited[i], unpack(others) } end
end
return { 'WAITING', redis.call('ZRANK', waiting, member) + 1, math.max(0, now - tonumber(redis.call('ZSCORE', waiting, member))), unpack(others) }
