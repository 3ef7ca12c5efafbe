--[[
  sightOrphan: the reconciler saw a runtime hold memory for a session incarnation that heldSessionOwners found no
  owner of. Checks ownership again, atomically with noting the sighting, so an owner that appeared since (a late
  session.opened) always wins: the sighting is dropped and nothing is released. Otherwise remembers when the
  allocation was first seen unowned and, once that is graceMs ago, claims it for one release.

  KEYS[1] session record   KEYS[2] bucket migrations   KEYS[3] the orphan sighting (HASH f first seen, c claimed at)
  KEYS[4] bucket quiet hash (includes/quiet.lua): the record while it is quiet
  ARGV[1] session id   ARGV[2] incarnation   ARGV[3] now (ms)   ARGV[4] graceMs: how long an allocation must stay
  unowned before it is released   ARGV[5] ttlMs: how long a sighting outlives the last pass that saw it (so what the
  runtime stops reporting is forgotten)   ARGV[6] claimMs: how long a claim holds before another pass may retake it
  (its releaser died)

  Returns one of:
    {'OWNED'}                  owned (record ACTIVE or DESTROYING at this incarnation, or a pending migration):
                               never released; any sighting dropped
    {'WAITING', firstSeen}     unowned since firstSeen, for less than graceMs
    {'DUE', firstSeen, now}    unowned for graceMs: claimed now; release it, then settleOrphan with claimedAt = now
    {'CLAIMED', claimedAt}     another pass claimed it at claimedAt and may be releasing it
]]
-- @include "quiet"
local sessionKey, migrationsKey, sightingKey = KEYS[1], KEYS[2], KEYS[3]
materialize(sessionKey, KEYS[4]) -- a quiet record (includes/quiet.lua) becomes a hash of its own first
local sessionId, inc = ARGV[1], ARGV[2]
local now, graceMs, ttlMs, claimMs = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])

local owned = redis.call('HEXISTS', migrationsKey, sessionId .. ':' .. inc) == 1
if not owned then
  local state = redis.call('HMGET', sessionKey, 's', 'i')
  owned = (state[1] == 'A' or state[1] == 'D') and tonumber(state[2]) == tonumber(inc)
end
if owned then
  redis.call('DEL', sightingKey)
  return { 'OWNED' }
end

local sighting = redis.call('HMGET', sightingKey, 'f', 'c')
local firstSeen, claimedAt = tonumber(sighting[1]), tonumber(sighting[2])
if not firstSeen then
  redis.call('HSET', sightingKey, 'f', ARGV[3])
  redis.call('PEXPIRE', sightingKey, ttlMs)
  return { 'WAITING', now }
end
redis.call('PEXPIRE', sightingKey, ttlMs)
if claimedAt and now - claimedAt < claimMs then return { 'CLAIMED', claimedAt } end
if now - firstSeen < graceMs then return { 'WAITING', firstSeen } end
redis.call('HSET', sightingKey, 'c', ARGV[3])
return { 'DUE', firstSeen, now }
