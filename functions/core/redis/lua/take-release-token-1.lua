--[[
  takeReleaseToken: the storm guard's token bucket per inference runtime, shared by every destroy-dispatch
  replica: at most `burst` release requests at once, refilled at `rate` per second. Time comes from the caller
  (its clock, as for every session script); a caller whose clock is behind the last one adds no tokens and never
  moves the bucket's time back.

  KEYS[1] the runtime's token bucket (HASH tk: tokens left, may be fractional; ts: when they were counted, ms)
  ARGV[1] now (ms)   ARGV[2] refill rate (tokens per second, > 0)   ARGV[3] burst (capacity, >= 1)

  Returns one of:
    {'TAKEN', tokensLeft}     one token taken; tokensLeft is the whole tokens still in the bucket
    {'EMPTY', retryInMs}      no whole token; retryInMs until the next one is refilled
]]
local key = KEYS[1]
local now, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

local state = redis.call('HMGET', key, 'tk', 'ts')
local tokens, ts = tonumber(state[1]), tonumber(state[2])
-- No bucket yet (or it expired once full): a full bucket.
if not tokens or not ts then tokens, ts = burst, now end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
  ts = now
end
if tokens < 1 then
  return { 'EMPTY', math.ceil((1 - tokens) * 1000 / rate) }
end
tokens = tokens - 1
redis.call('HSET', key, 'tk', tokens, 'ts', ts)
-- Once it would be full again the bucket carries no information: let it expire (a missing bucket is a full one).
redis.call('PEXPIRE', key, math.ceil(burst * 1000 / rate) + 60000)
return { 'TAKEN', math.floor(tokens) }
