-- Shared helpers of the storm guard's slot scripts (inlined where a script says `-- @include "release-slots"`).
--
-- A node's in-flight set (ZSET member '<sessionId>:<incarnation>' -> lease expiry, ms) holds its slots; its wait
-- queue (ZSET member -> when it was first enqueued, ms) holds the destroys refused a slot, oldest first.

-- Frees the slots whose lease ran out and returns how many are held now.
local function purge_expired(inflight, now)
  redis.call('ZREMRANGEBYSCORE', inflight, '-inf', now)
  return redis.call('ZCARD', inflight)
end

-- Hands up to `free` slots to the oldest waiters, moving them from the queue to the in-flight set; returns them and,
-- in a second list, how long each waited (ms, from its first enqueue to now), for the queue-wait histogram.
local function admit_oldest(inflight, waiting, free, now, lease)
  if free <= 0 then return {}, {} end
  local heads = redis.call('ZRANGE', waiting, 0, free - 1, 'WITHSCORES')
  local admitted, waited = {}, {}
  for i = 1, #heads, 2 do
    local m = heads[i]
    redis.call('ZADD', inflight, now + lease, m)
    redis.call('ZREM', waiting, m)
    admitted[#admitted + 1] = m
    waited[#waited + 1] = math.max(0, now - tonumber(heads[i + 1]))
  end
  return admitted, waited
end

-- The admitted members and their waits as one flat list (member, waited ms, member, waited ms, ...), skipping `except`.
local function with_waits(admitted, waited, except)
  local out = {}
  for i, m in ipairs(admitted) do
    if m ~= except then
      out[#out + 1] = m
      out[#out + 1] = waited[i]
    end
  end
  return out
end

-- Keeps both keys only as long as they mean something: the in-flight set lives as long as its longest lease; the
-- queue one lease past its last change (slots free, and so the queue moves, at least once a lease while anything
-- is in flight; past that every waiter is still in its stall watchdog, which enqueues it again).
local function expire_slot_keys(inflight, waiting, now, lease)
  local latest = redis.call('ZRANGE', inflight, -1, -1, 'WITHSCORES')
  if latest[2] then redis.call('PEXPIRE', inflight, math.max(1, tonumber(latest[2]) - now)) end
  if redis.call('ZCARD', waiting) > 0 then redis.call('PEXPIRE', waiting, lease) end
end
