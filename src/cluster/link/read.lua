-- Op::Read, atomically (see ops.rs), after epoch.lua. The stream's keys share one hash tag.
-- KEYS[1] meta hash (epoch, seq, run), KEYS[2] log stream.
-- ARGV[1] after (decimal seq, or "" for no entries), ARGV[2] epoch candidate (decimal),
-- ARGV[3] TTL in ms, ARGV[4] Redis run id, ARGV[5] durable ("1"/"0").
-- Returns {epoch (decimal string), top, entries} where entries is XRANGE's answer for
-- seqs after..top: {{"SEQ-0", {"d", data}}, ...}.
local entries = {}
if ARGV[1] ~= '' then
  local after = tonumber(ARGV[1])
  if after < top then
    entries = redis.call('XRANGE', log, string.format('%d', after + 1) .. '-0',
      string.format('%d', top) .. '-0')
  end
end
return {epoch, top, entries}
