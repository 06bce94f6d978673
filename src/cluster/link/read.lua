-- Op::Read, atomically (see ops.rs). The stream's keys share one hash tag.
-- KEYS[1] meta hash (epoch, seq, run), KEYS[2] log stream.
-- ARGV[1] after (decimal seq, or "" for no entries), ARGV[2] epoch candidate (decimal),
-- ARGV[3] TTL in ms, ARGV[4] Redis run id, ARGV[5] durable ("1"/"0").
-- Returns {epoch (decimal string), top, entries} where entries is XRANGE's answer for
-- seqs after..top: {{"SEQ-0", {"d", data}}, ...}.
local meta, log = KEYS[1], KEYS[2]
local m = redis.call('HMGET', meta, 'epoch', 'seq', 'run')
local epoch, top = m[1], tonumber(m[2]) or 0
if not epoch or (ARGV[5] ~= '1' and m[3] ~= ARGV[4]) then
  epoch, top = ARGV[2], 0
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', epoch, 'seq', 0, 'run', ARGV[4])
end
redis.call('PEXPIRE', meta, ARGV[3])
redis.call('PEXPIRE', log, ARGV[3])
local entries = {}
if ARGV[1] ~= '' then
  local after = tonumber(ARGV[1])
  if after < top then
    entries = redis.call('XRANGE', log, string.format('%d', after + 1) .. '-0',
      string.format('%d', top) .. '-0')
  end
end
return {epoch, top, entries}
