-- Op::Publish, atomically (see ops.rs). The stream's keys share one hash tag.
-- KEYS[1] meta hash (epoch, seq, run), KEYS[2] log stream, KEYS[3] idempotency key (optional).
-- ARGV[1] data, ARGV[2] epoch candidate (decimal), ARGV[3] existing_only ("1"/"0"),
-- ARGV[4] history size (entries kept, 0: none), ARGV[5] TTL in ms, ARGV[6] Redis run id,
-- ARGV[7] durable ("1"/"0"), ARGV[8] the stream's pub/sub topic.
-- Returns {1, seq, epoch} (epoch as a decimal string), or {0} for "no stream".
local meta, log, idem = KEYS[1], KEYS[2], KEYS[3]
if idem then
  local prev = redis.call('GET', idem)
  if prev then
    local sp = string.find(prev, ' ', 1, true)
    if sp then
      return {1, tonumber(string.sub(prev, 1, sp - 1)), string.sub(prev, sp + 1)}
    end
  end
end
local m = redis.call('HMGET', meta, 'epoch', 'run')
local epoch = m[1]
if not epoch and ARGV[3] == '1' then
  return {0}
end
if not epoch or (ARGV[7] ~= '1' and m[2] ~= ARGV[6]) then
  -- A new epoch: nothing stored under the old one counts any more.
  epoch = ARGV[2]
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', epoch, 'seq', 0, 'run', ARGV[6])
end
local seq = redis.call('HINCRBY', meta, 'seq', 1)
local id = string.format('%d', seq)
local keep = tonumber(ARGV[4])
if keep > 0 then
  redis.call('XADD', log, 'MAXLEN', '=', keep, id .. '-0', 'd', ARGV[1])
  redis.call('PEXPIRE', log, ARGV[5])
else
  redis.call('DEL', log)
end
redis.call('PEXPIRE', meta, ARGV[5])
redis.call('PUBLISH', ARGV[8], id .. ' ' .. epoch .. ' ' .. ARGV[1])
if idem then
  redis.call('SET', idem, id .. ' ' .. epoch, 'PX', 300000)
end
return {1, seq, epoch}
