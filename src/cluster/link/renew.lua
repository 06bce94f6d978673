-- Op::Renew, atomically (see ops.rs), after epoch.lua. The stream's keys share one hash tag.
-- KEYS[1] meta hash (epoch, seq, run), KEYS[2] log stream.
-- ARGV[1] the old epoch (decimal), ARGV[2] epoch candidate (decimal), ARGV[3] TTL in ms,
-- ARGV[4] Redis run id, ARGV[5] durable ("1"/"0").
-- If the epoch is still the old one: a new epoch, the top kept, the entries dropped. A stream
-- with no epoch, or one that needs a new epoch by the run rule, starts over at top 0 (as Read,
-- in epoch.lua).
-- Returns {epoch (decimal string), top}.
if not fresh and epoch == ARGV[1] then
  epoch = ARGV[2]
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', epoch, 'run', ARGV[4])
end
return {epoch, top}
