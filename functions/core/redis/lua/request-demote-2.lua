--[[
  requestDemote: the idle checker asks for a quiet live session's KV to be moved off the GPU (demote before destroy).
  Demote and restore are the session's offload stages (`dm`), each under a token (`dk`) that only the call it was
  requested for may settle; one demote is pending at a time, and a session refused a demote for good (`dx`: its
  runtime cannot demote) is never asked again in this incarnation.

  KEYS[1] session record
  KEYS[2] bucket quiet hash (includes/quiet.lua): the record while it is quiet
  ARGV[1] session id   ARGV[2] incarnation   ARGV[3] a fresh token (used only when a new demote is requested)
  ARGV[4] now (ms)

  Returns one of:
    {'REQUESTED', token}   the demote is requested under ARGV[3]: emit gpu.demote.requested with it
    {'PENDING', token}     a demote was requested already (its event may have been lost): emit it again, same token
    {'ALREADY', stage}     demoted, or being restored: nothing to do
    {'REFUSED'}            the runtime refused a demote of this incarnation for good
    {'HELD', holdUntil}    the session is held busy: its KV is about to be needed
    {'ENDED', state}       no longer live (or its end is already known)
    {'STALE', incarnation} another incarnation lives now
    {'UNKNOWN'}
]]
-- @include "quiet"
local sessionKey = KEYS[1]
materialize(sessionKey, KEYS[2]) -- a quiet record (includes/quiet.lua) becomes a hash of its own first
local inc, token, now = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])

local rec = redis.call('HMGET', sessionKey, 's', 'i', 'h', 'pc', 'dm', 'dk', 'dx')
if not rec[1] then return { 'UNKNOWN' } end
if tonumber(rec[2]) ~= inc then return { 'STALE', tonumber(rec[2]) } end
if rec[1] ~= 'A' or rec[4] then return { 'ENDED', rec[1] } end
if tonumber(rec[3] or '0') > now then return { 'HELD', tonumber(rec[3]) } end
if rec[5] == 'demoting' then return { 'PENDING', rec[6] } end
if rec[5] then return { 'ALREADY', rec[5] } end
if rec[7] then return { 'REFUSED' } end
redis.call('HSET', sessionKey, 'dm', 'demoting', 'dk', token, 'dq', now)
return { 'REQUESTED', token }
