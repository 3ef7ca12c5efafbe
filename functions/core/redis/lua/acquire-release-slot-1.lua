--[[
  acquireReleaseSlot: the storm guard's concurrency limit per GPU node, shared by every destroy-dispatch replica.
  A slot is a lease: a member of the node's in-flight set scored by the time its lease runs out, so the slot of a
  holder that crashed, or of a release whose outcome never came back, frees itself when the lease expires.
  Acquiring again for the same member renews its lease and never takes a second slot.

  KEYS[1] the node's in-flight GPU releases (ZSET member '<sessionId>:<incarnation>' -> lease expiry, ms)
  ARGV[1] member   ARGV[2] now (ms)   ARGV[3] lease (ms)   ARGV[4] most releases the node may have in flight

  Returns one of:
    {'ACQUIRED', inFlight}             a new slot; inFlight counts it
    {'HELD', inFlight}                 the member held a live slot already; its lease now runs from now
    {'BUSY', inFlight, retryInMs}      every slot is taken; retryInMs until the earliest lease runs out
]]
local key = KEYS[1]
local member, now, lease, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])

redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
local held = redis.call('ZSCORE', key, member)
local inFlight = redis.call('ZCARD', key)
if not held and inFlight >= limit then
  local earliest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return { 'BUSY', inFlight, math.max(0, tonumber(earliest[2]) - now) }
end
redis.call('ZADD', key, now + lease, member)
-- The set lives as long as its longest lease, so a node with nothing in flight leaves no key behind.
local latest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', key, math.max(1, tonumber(latest[2]) - now))
if held then return { 'HELD', inFlight } end
return { 'ACQUIRED', inFlight + 1 }
