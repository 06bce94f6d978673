-- The prologue of read.lua and renew.lua (commands.rs joins it in front of each): the stream's
-- epoch and top as stored, or a new epoch at top 0 when the stream has none or needs a new one
-- by the run rule (not durable and the Redis run id changed: a restart lost what it held).
-- KEYS[1] meta hash (epoch, seq, run), KEYS[2] log stream.
-- ARGV[2] epoch candidate (decimal), ARGV[3] TTL in ms, ARGV[4] Redis run id,
-- ARGV[5] durable ("1"/"0"); ARGV[1] is the script's own.
-- Leaves `meta`, `log`, `epoch`, `top` and `fresh` (true when the epoch was just started) set,
-- and both keys' TTL renewed.
local meta, log = KEYS[1], KEYS[2]
local m = redis.call('HMGET', meta, 'epoch', 'seq', 'run')
local epoch, top = m[1], tonumber(m[2]) or 0
local fresh = not epoch or (ARGV[5] ~= '1' and m[3] ~= ARGV[4])
if fresh then
  epoch, top = ARGV[2], 0
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', epoch, 'seq', 0, 'run', ARGV[4])
end
redis.call('PEXPIRE', meta, ARGV[3])
redis.call('PEXPIRE', log, ARGV[3])
