"""The Lua scripts of the Redis engine: each one is atomic, so every node sees one order.

Keys (``gc:`` prefix; ``R`` is a room key, ``U`` a user key, both casefolded names):

``gc:room:R:meta``     hash: ``offset`` (last number given), ``epoch`` (changes on clear
                       and when Redis lost the room), ``topic``, ``locked``
``gc:room:R:lines``    stream of stored lines (message, action, clear); id = offset-0,
                       capped at ``--history-max`` (``MAXLEN ~``)
``gc:room:R:events``   stream of unstored room events (joins, leaves, topics, modes),
                       same offsets, short cap: used only to fill gaps
``gc:room:R:members``  hash U -> name, every node's members
``gc:room:R:ops``      set of operators' keys
``gc:rooms``           hash R -> room name, rooms with members
``gc:users``           hash U -> {"n": name, "node": node}
``gc:users:exp``       sorted set U -> expiry (ms, Redis clock); refreshed by the owner node
``gc:user:U:rooms``    set of the rooms U is in (so a dead node's users can be cleaned)
``gc:fail:IP``         failed logins of an address (INCR, EXPIRE window)

Channels: ``gc:r:R`` (a room's batches: ``EPOCH\\nOFFSET JSON\\n...``), ``gc:node:NAME``
(commands for one node's users), ``gc:all`` (cluster-wide: shutdown).
"""

from __future__ import annotations

HEAD = r"""
local P = 'gc:'
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function new_epoch()
  local t = redis.call('TIME')
  return t[1] .. string.format('%06d', tonumber(t[2]))
end
-- The room's epoch; a room Redis does not know (new, or lost) starts a new one, and
-- any stale stream left without its meta goes.
local function room_epoch(room)
  local meta = P .. 'room:' .. room .. ':meta'
  local e = redis.call('HGET', meta, 'epoch')
  if not e then
    e = new_epoch()
    redis.call('DEL', P .. 'room:' .. room .. ':lines', P .. 'room:' .. room .. ':events')
    redis.call('HSET', meta, 'epoch', e)
  end
  return e
end
local function append(room, stored, payload, maxlen, evmax)
  local off = redis.call('HINCRBY', P .. 'room:' .. room .. ':meta', 'offset', 1)
  if stored then
    redis.call('XADD', P .. 'room:' .. room .. ':lines', 'MAXLEN', '~', maxlen,
               off .. '-0', 'e', payload)
  else
    redis.call('XADD', P .. 'room:' .. room .. ':events', 'MAXLEN', '~', evmax,
               off .. '-0', 'e', payload)
  end
  return off
end
local function leave(room, key)
  local members = P .. 'room:' .. room .. ':members'
  redis.call('HDEL', members, key)
  redis.call('SREM', P .. 'room:' .. room .. ':ops', key)
  redis.call('SREM', P .. 'user:' .. key .. ':rooms', room)
  if redis.call('HLEN', members) == 0 then
    redis.call('HDEL', P .. 'rooms', room)
    redis.call('DEL', P .. 'room:' .. room .. ':ops')
  end
end
-- Users whose node stopped refreshing them: out of every room, a quit announced in
-- each (exactly once: this runs atomically), the name freed.
local function reap(maxlen, evmax)
  local exp = P .. 'users:exp'
  local dead = redis.call('ZRANGE', exp, '-inf', now_ms(), 'BYSCORE', 'LIMIT', 0, 500)
  for _, key in ipairs(dead) do
    local info = redis.call('HGET', P .. 'users', key)
    local name = key
    if info then name = cjson.decode(info)['n'] end
    local payload = cjson.encode({k = 'quit', name = name, reason = 'connection lost'})
    for _, room in ipairs(redis.call('SMEMBERS', P .. 'user:' .. key .. ':rooms')) do
      leave(room, key)
      local epoch = room_epoch(room)
      local off = append(room, false, payload, maxlen, evmax)
      redis.call('PUBLISH', P .. 'r:' .. room, epoch .. '\n' .. off .. ' ' .. payload)
    end
    redis.call('DEL', P .. 'user:' .. key .. ':rooms')
    redis.call('HDEL', P .. 'users', key)
    redis.call('ZREM', exp, key)
  end
  return #dead
end
"""

#: ARGV: room, maxlen, evmax, then (flag, payload) pairs; flag 's' stored, 'u' not.
#: One call per room per loop pass: every event numbered, stored, and one PUBLISH.
PUBLISH = HEAD + r"""
local room = ARGV[1]
local epoch = room_epoch(room)
local out = {epoch}
for i = 4, #ARGV, 2 do
  local off = append(room, ARGV[i] == 's', ARGV[i + 1], ARGV[2], ARGV[3])
  out[#out + 1] = off .. ' ' .. ARGV[i + 1]
end
redis.call('PUBLISH', P .. 'r:' .. room, table.concat(out, '\n'))
return epoch
"""

#: ARGV: room, maxlen, evmax, payload of the Cleared event. Empties the history and
#: appends the clear, with a new epoch, atomically: no line slips in between.
CLEAR = HEAD + r"""
local room = ARGV[1]
room_epoch(room)
local epoch = new_epoch()
redis.call('HSET', P .. 'room:' .. room .. ':meta', 'epoch', epoch)
redis.call('DEL', P .. 'room:' .. room .. ':lines')
local off = append(room, true, ARGV[4], ARGV[2], ARGV[3])
redis.call('PUBLISH', P .. 'r:' .. room, epoch .. '\n' .. off .. ' ' .. ARGV[4])
return epoch
"""

#: ARGV: key, info json, ttl ms, maxlen, evmax, old key ('' for a new user). 1 if
#: claimed (a rename moves memberships and operator rights), 0 if taken.
CLAIM = HEAD + r"""
local key, old = ARGV[1], ARGV[6]
reap(ARGV[4], ARGV[5])
if key ~= old and redis.call('HEXISTS', P .. 'users', key) == 1 then return 0 end
redis.call('HSET', P .. 'users', key, ARGV[2])
redis.call('ZADD', P .. 'users:exp', now_ms() + tonumber(ARGV[3]), key)
if old ~= '' and old ~= key then
  local name = cjson.decode(ARGV[2])['n']
  for _, room in ipairs(redis.call('SMEMBERS', P .. 'user:' .. old .. ':rooms')) do
    redis.call('HDEL', P .. 'room:' .. room .. ':members', old)
    redis.call('HSET', P .. 'room:' .. room .. ':members', key, name)
    if redis.call('SREM', P .. 'room:' .. room .. ':ops', old) == 1 then
      redis.call('SADD', P .. 'room:' .. room .. ':ops', key)
    end
    redis.call('SADD', P .. 'user:' .. key .. ':rooms', room)
  end
  redis.call('DEL', P .. 'user:' .. old .. ':rooms')
  redis.call('HDEL', P .. 'users', old)
  redis.call('ZREM', P .. 'users:exp', old)
elseif old == key then
  local name = cjson.decode(ARGV[2])['n']
  for _, room in ipairs(redis.call('SMEMBERS', P .. 'user:' .. key .. ':rooms')) do
    redis.call('HSET', P .. 'room:' .. room .. ':members', key, name)
  end
end
return 1
"""

#: ARGV: key, node. The user went away: out of every room, name freed (if still ours).
RELEASE = HEAD + r"""
local key = ARGV[1]
local info = redis.call('HGET', P .. 'users', key)
if not info or cjson.decode(info)['node'] ~= ARGV[2] then return 0 end
for _, room in ipairs(redis.call('SMEMBERS', P .. 'user:' .. key .. ':rooms')) do
  leave(room, key)
end
redis.call('DEL', P .. 'user:' .. key .. ':rooms')
redis.call('HDEL', P .. 'users', key)
redis.call('ZREM', P .. 'users:exp', key)
return 1
"""

#: ARGV: room, room name, key, name, lobby ('1' or '0'). 1 if the room had no member on
#: any node (the newcomer runs it; never in the lobby).
ENTER = HEAD + r"""
local room, key = ARGV[1], ARGV[3]
local members = P .. 'room:' .. room .. ':members'
local first = redis.call('HLEN', members) == 0 or
  (redis.call('HLEN', members) == 1 and redis.call('HEXISTS', members, key) == 1)
redis.call('HSET', members, key, ARGV[4])
redis.call('SADD', P .. 'user:' .. key .. ':rooms', room)
redis.call('HSET', P .. 'rooms', room, ARGV[2])
if first and ARGV[5] ~= '1' then
  redis.call('DEL', P .. 'room:' .. room .. ':ops')
  redis.call('SADD', P .. 'room:' .. room .. ':ops', key)
  return 1
end
return 0
"""

#: ARGV: room, key.
LEAVE = HEAD + r"""
leave(ARGV[1], ARGV[2])
return 1
"""

#: ARGV: ttl ms, maxlen, evmax, then user keys of this node. Refreshes their expiry
#: (only those Redis still has) and reaps everyone else's expired users.
REFRESH = HEAD + r"""
local at = now_ms() + tonumber(ARGV[1])
for i = 4, #ARGV do
  redis.call('ZADD', P .. 'users:exp', 'XX', at, ARGV[i])
end
return reap(ARGV[2], ARGV[3])
"""

#: ARGV: window seconds. KEYS[1]: the address's counter. Returns the new count.
FAIL = r"""
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""

ALL = {"publish": PUBLISH, "clear": CLEAR, "claim": CLAIM, "release": RELEASE,
       "enter": ENTER, "leave": LEAVE, "refresh": REFRESH, "fail": FAIL}
