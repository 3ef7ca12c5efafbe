--[[
  requestRestore: user activity arrived for a session whose KV was (or is being) moved off the GPU: bring it back.
  A demote still pending is overtaken: its token no longer matches the stage, so a demote call not yet made is never
  made, and one in flight is booked when it settles and then restored (the calls share one lease per incarnation,
  begin-offload-call-4.lua, so the restore waits for it).

  KEYS[1] session record
  KEYS[2] bucket quiet hash (includes/quiet.lua): the record while it is quiet
  ARGV[1] session id   ARGV[2] incarnation   ARGV[3] a fresh token (used only when a new restore is requested)
  ARGV[4] now (ms)

  Returns one of:
    {'REQUESTED', token}   the restore is requested under ARGV[3]: emit gpu.restore.requested with it
    {'PENDING', token}     a restore was requested already: emit it again (same token; a redelivered activity)
    {'RESIDENT'}           nothing is offloaded or being offloaded
    {'ENDED', state}       no longer live
    {'STALE', incarnation} another incarnation lives now
    {'UNKNOWN'}
]]
-- @include "quiet"
local sessionKey = KEYS[1]
materialize(sessionKey, KEYS[2]) -- a quiet record (includes/quiet.lua) becomes a hash of its own first
local inc, token, now = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])

local rec = redis.call('HMGET', sessionKey, 's', 'i', 'dm', 'dk')
if not rec[1] then return { 'UNKNOWN' } end
if tonumber(rec[2]) ~= inc then return { 'STALE', tonumber(rec[2]) } end
if rec[1] ~= 'A' then return { 'ENDED', rec[1] } end
if not rec[3] then return { 'RESIDENT' } end
if rec[3] == 'restoring' then return { 'PENDING', rec[4] } end
redis.call('HSET', sessionKey, 'dm', 'restoring', 'dk', token, 'dq', now)
return { 'REQUESTED', token }
