-- The idle verdicts the idle checker recorded for a session (inlined where a script says `-- @include
-- "idle-verdicts"`; written by record-idle-verdict-3.lua, checked by claim-destroy-7.lua): field 'iv' of its activity
-- context, '<id> <at>' pairs, space-separated, oldest first (event ids never hold a space), at most
-- IDLE_VERDICTS_KEPT of them.
local IDLE_VERDICTS_KEPT = 4

-- A verdict time read from text: ms since the epoch, a whole number Lua's doubles hold exactly; nil for anything else
-- (NaN fails every comparison).
local function verdictTime(text)
  local at = tonumber(text)
  if at and at >= 0 and at <= 9007199254740991 then return at end
  return nil
end

-- The recorded verdicts, oldest first: { { id = <event id>, at = <its time as stored> }, ... }.
local function readIdleVerdicts(contextKey)
  local words, verdicts = {}, {}
  for w in string.gmatch(redis.call('HGET', contextKey, 'iv') or '', '[^ ]+') do words[#words + 1] = w end
  for j = 1, #words - 1, 2 do verdicts[#verdicts + 1] = { id = words[j], at = words[j + 1] } end
  return verdicts
end
