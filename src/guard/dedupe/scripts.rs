//! The Lua scripts that make reserving, confirming and releasing an
//! item's keys atomic in Redis, so two replicas taking the same duplicate
//! at the same moment cannot both reserve it. Their in-memory twins are in
//! `store.rs`; the two must answer alike.

/// Lookup (before the scan): GET Message-ID key, GET content key, recent
/// SimHashes; pending values are skipped (nothing is folded into an item
/// that is not stored yet).
///
/// Reserve (atomic, just before the write): if either exact key names an
/// earlier stored item, returns it ({'folded', value}); if it names
/// another item whose write is in flight, returns {'pending', value} (the
/// caller waits for it to be confirmed, released or expired); else takes
/// both keys with a pending value that expires on its own, so a gateway
/// killed between reservation and write leaves nothing to fold into.
/// KEYS mid, content; ARGV pending value, pending lifetime ms, use mid,
/// use content, own attempt suffix ("~DIGEST", or "" for none: a value with
/// it is this item's own earlier attempt, taken over, never returned).
pub(super) const RESERVE: &str = r#"
local function own(v)
  return ARGV[5] ~= '' and string.sub(v, -string.len(ARGV[5])) == ARGV[5]
end
for i = 1, 2 do
  if ARGV[2 + i] == '1' then
    local v = redis.call('GET', KEYS[i])
    if v and not own(v) then
      if string.sub(v, 1, 1) == '?' then return {'pending', v} end
      return {'folded', v}
    end
  end
end
for i = 1, 2 do
  if ARGV[2 + i] == '1' then redis.call('SET', KEYS[i], ARGV[1], 'PX', tonumber(ARGV[2])) end
end
return {'reserved', ''}
"#;

/// Confirm (once the write returned): the pending exact keys become the
/// stored item's (a key another item took meanwhile is left to it), the
/// item joins the customer's recent near-duplicate candidates (the own
/// earlier attempt's members dropped) and becomes the customer's latest.
/// KEYS mid, content, recent, last; ARGV pending value, stored value,
/// window ms, now ms, member ("" for none), recent cap, use mid, use
/// content, own attempt suffix.
pub(super) const CONFIRM: &str = r#"
for i = 1, 2 do
  if ARGV[6 + i] == '1' then
    local v = redis.call('GET', KEYS[i])
    if (not v) or v == ARGV[1] then redis.call('SET', KEYS[i], ARGV[2], 'PX', tonumber(ARGV[3])) end
  end
end
local window = tonumber(ARGV[3])
if ARGV[9] ~= '' then
  for _, m in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    if string.sub(m, -string.len(ARGV[9])) == ARGV[9] then redis.call('ZREM', KEYS[3], m) end
  end
end
if ARGV[5] ~= '' then
  local now = tonumber(ARGV[4])
  redis.call('ZADD', KEYS[3], now, ARGV[5])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[6]) + 1))
  redis.call('PEXPIRE', KEYS[3], window)
end
redis.call('SET', KEYS[4], ARGV[2], 'PX', math.max(window, 86400000))
return 1
"#;

/// Undoes a reservation whose item was not stored, so a retry is not kept
/// waiting for it. KEYS mid, content; ARGV pending value.
pub(super) const RELEASE: &str = r#"
for i = 1, 2 do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return 1
"#;
