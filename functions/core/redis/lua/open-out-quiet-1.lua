--[[
  openOutQuiet: turns quiet records (includes/quiet.lua) of one bucket back into hashes of their own, as every script
  but open and heartbeat does before reading one: what an operator runs (`sessionctl unpack`) before a fleet goes
  back to a version without quiet records, once SESSION_RECORD_PACKING=false has reached every replica.

  KEYS[1] bucket quiet hash
  ARGV[1] the bucket's session record key prefix (`<prefix>:{<bucket>}:s:`): records carry the bucket's hash tag, so
          on Redis Cluster they live in KEYS[1]'s slot (built here, as claim-due builds them: while a resharding
          moves the slot a call may fail, and is simply run again)
  ARGV[2..] session ids (as HSCAN of KEYS[1] listed them; an id no longer quiet is passed over)

  Returns {opened, dropped}: how many of the ids were opened out, and how many quiet fields were dropped because the
  session has a record key of its own, which wins (a stale field, left by a replica that cannot read quiet records
  running beside one that packs).
]]
-- @include "quiet"
local quietKey, recordPrefix = KEYS[1], ARGV[1]
local opened, dropped = 0, 0
for k = 2, #ARGV do
  local done = materialize(recordPrefix .. ARGV[k], quietKey)
  if done == 'opened' then opened = opened + 1 elseif done == 'dropped' then dropped = dropped + 1 end
end
return { opened, dropped }
