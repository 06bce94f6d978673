-- Op::Renew, atomically (see ops.rs). The stream's keys share one hash tag.
-- KEYS[1] meta hash (epoch, seq, run), KEYS[2] log stream.
-- ARGV[1] the old epoch (decimal), ARGV[2] epoch candidate (decimal), ARGV[3] TTL in ms,
-- ARGV[4] Redis run id, ARGV[5] durable ("1"/"0").
-- If the epoch is still the old one: a new epoch, the top kept, the entries dropped. A stream
-- with no epoch, or one that needs a new epoch by the run rule, starts over at top 0 (as Read).
-- Returns {epoch (decimal string), top}.
local meta, log = KEYS[1], KEYS[2]
local m = redis.call('HMGET', meta, 'epoch', 'seq', 'run')
local epoch, top = m[1], tonumber(m[2]) or 0
if not epoch or (ARGV[5] ~= '1' and m[3] ~= ARGV[4]) then
  epoch, top = ARGV[2], 0
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', epoch, 'seq', 0, 'run', ARGV[4])
elseif epoch == ARGV[1] then
  epoch = ARGV[2]
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', epoch, 'run', ARGV[4])
end
redis.call('PEXPIRE', meta, ARGV[3])
redis.call('PEXPIRE', log, ARGV[3])
return {epoch, top}
