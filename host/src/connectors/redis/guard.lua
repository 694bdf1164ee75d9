-- weir's guarded write of feature vectors: one call writes many entities.
--
-- KEYS: the entities' hash keys.
-- ARGV[1]: TTL mode (0 none, 1 PEXPIRE ttl after the write, 2 PEXPIREAT event time + ttl)
-- ARGV[2]: TTL in milliseconds
-- ARGV[3]: the lineage stored in `_lineage` with every vector of the call
--          (the batch's), or '' for none
-- then per key, in KEYS order:
--   np, nd: the number of field/value pairs and of fields to delete;
--   np pairs, the first one `_event_time_ms` and the vector's event time in ms;
--   nd field names (null features) to delete.
--
-- A vector is written only if no stored vector is newer: the stored
-- `_event_time_ms` is compared with the new one here, atomically, so replays and
-- out-of-order arrivals never overwrite a newer vector. An equal time rewrites
-- (an idempotent replay, or the same vector computed again by newer code).
-- Returns the number of vectors written.
local mode = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local lineage = ARGV[3]
local a = 4
local written = 0
for k = 1, #KEYS do
  local key = KEYS[k]
  local np = tonumber(ARGV[a])
  local nd = tonumber(ARGV[a + 1])
  local p = a + 2
  a = p + 2 * np + nd
  local new = tonumber(ARGV[p + 1])
  local old = redis.pcall('HGET', key, '_event_time_ms')
  if type(old) == 'table' and old.err then
    return redis.error_reply('WRONGTYPE ' .. key .. ': ' .. old.err)
  end
  -- A stored time that is not a number (written by something else) is replaced.
  local stored = old and tonumber(old)
  if (not stored) or stored <= new then
    if nd > 0 then redis.call('HDEL', key, unpack(ARGV, p + 2 * np, a - 1)) end
    if lineage ~= '' then
      redis.call('HSET', key, '_lineage', lineage, unpack(ARGV, p, p + 2 * np - 1))
    else
      redis.call('HSET', key, unpack(ARGV, p, p + 2 * np - 1))
    end
    if mode == 1 then
      redis.call('PEXPIRE', key, ttl)
    elseif mode == 2 then
      redis.call('PEXPIREAT', key, string.format('%.0f', new + ttl))
    end
    written = written + 1
  end
end
return written
