//! The Lua scripts the cluster runs in Redis, and the parsing of their replies. Each is
//! atomic there: whichever node runs an append, the dedup check, the next seq, the
//! stream entry, the trim and the publish to the other nodes happen as one step, so the
//! seq, dedup and ordering guarantees of one broker hold for the cluster.
//!
//! Numbers cross as decimal strings (Lua's numbers are doubles: exact to 2^53, which
//! seqs, timestamps and epochs stay below).

use redis::Value;

use crate::config::PubSubKind;
use crate::engine::TopicStats;

/// Removes a topic's oldest messages while a limit is passed: more than `max_msgs` (-1: no limit),
/// more than `max_bytes` (the newest message always stays), or older than `min_ts`; at
/// most `budget` of them, so that no script runs long. Returns how many went.
const TRIM: &str = r#"
local function trim(meta, log, max_msgs, max_bytes, min_ts, budget)
  local removed = 0
  while removed < budget do
    local n = redis.call('XLEN', log)
    if n == 0 then break end
    local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)[1]
    local bytes = tonumber(redis.call('HGET', meta, 'bytes') or '0')
    local over = (max_msgs >= 0 and n > max_msgs)
      or (max_bytes > 0 and n > 1 and bytes > max_bytes)
      or (min_ts > 0 and tonumber(first[2][2]) < min_ts)
    if not over then break end
    redis.call('XDEL', log, first[1])
    redis.call('HINCRBY', meta, 'bytes', -#first[2][4])
    removed = removed + 1
  end
  return removed
end
"#;

/// A run of appends to one topic. KEYS: meta, log, then the dedup entry of each
/// message that has an ID, in order. ARGV: now (ms), a new epoch (used if the topic has
/// none: created, or its history lost), dedup window (ms), max_msgs (-1: none),
/// max_bytes (0: none), live channel, n, then n pairs of (has ID `1`/`0`, body).
/// Reply: `{epoch, ts, r1, …, rn}` where each r is the seq stored at, or minus the seq
/// of the message stored before with the same ID (a duplicate). One `PUBLISH` carries
/// every message stored: `D<epoch>:<ts>:` then `<seq>:<len>:<body>` for each.
const APPEND: &str = r#"
local meta, log = KEYS[1], KEYS[2]
local dedup_ms, channel = ARGV[3], ARGV[6]
local max_msgs, max_bytes, n = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[7])
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  -- A new topic, or one whose counters are gone (a flush, an eviction): a new epoch,
  -- and what is left of an older history is not this one's.
  epoch = ARGV[2]
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', epoch, 'seq', 0, 'ts', 0, 'bytes', 0)
end
local ts, last = ARGV[1], redis.call('HGET', meta, 'ts') or '0'
if tonumber(ts) < tonumber(last) then ts = last end
local seq = tonumber(redis.call('HGET', meta, 'seq') or '0')
local out, live, bytes, k = {epoch, ts}, {}, 0, 3
for i = 1, n do
  local id, body = nil, ARGV[7 + 2 * i]
  if ARGV[6 + 2 * i] == '1' then id = KEYS[k]; k = k + 1 end
  local dup = nil
  if id then
    local v = redis.call('GET', id)
    if v then
      local e, s = string.match(v, '^(%d+):(%d+)$')
      if e == epoch then dup = tonumber(s) end
    end
  end
  if dup then
    out[#out + 1] = -dup
  else
    seq = seq + 1
    redis.call('XADD', log, seq .. '-0', 't', ts, 'b', body)
    if id then redis.call('SET', id, epoch .. ':' .. seq, 'PX', dedup_ms) end
    bytes = bytes + #body
    out[#out + 1] = seq
    live[#live + 1] = seq .. ':' .. #body .. ':' .. body
  end
end
redis.call('HSET', meta, 'seq', seq, 'ts', ts)
if bytes > 0 then redis.call('HINCRBY', meta, 'bytes', bytes) end
if max_msgs >= 0 or max_bytes > 0 then trim(meta, log, max_msgs, max_bytes, 0, 100 + n) end
if #live > 0 then
  redis.call('PUBLISH', channel, 'D' .. epoch .. ':' .. ts .. ':' .. table.concat(live))
end
return out
"#;

/// KEYS: meta, log. ARGV: max_msgs, max_bytes, min_ts, budget. Reply: removed count.
const RETAIN: &str = r#"
return trim(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4]))
"#;

/// KEYS: meta, log. ARGV: from seq, count. Reply: `{epoch, entries}`.
const READ: &str = r#"
return {redis.call('HGET', KEYS[1], 'epoch') or '0',
  redis.call('XRANGE', KEYS[2], ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])}
"#;

/// KEYS: meta, log. Reply: `{epoch, last seq, last ts, bytes, messages, first entry id}`.
const STATS: &str = r#"
local m = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'ts', 'bytes')
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
return {m[1] or '0', m[2] or '0', m[3] or '0', m[4] or '0',
  tostring(redis.call('XLEN', KEYS[2])), first and first[1] or '0-0'}
"#;

/// KEYS: log. ARGV: ts. Reply: the first seq whose timestamp is at or after ts, or 0
/// if there is none. A binary search over "the first entry at or after seq x", whose
/// timestamp grows with x.
const SEEK: &str = r#"
local log, want = KEYS[1], tonumber(ARGV[1])
local function seq_of(e) return tonumber(string.match(e[1], '^(%d+)')) end
local function at(x) return redis.call('XRANGE', log, x .. '-0', '+', 'COUNT', 1)[1] end
local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)[1]
local last = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)[1]
if not first or tonumber(last[2][2]) < want then return 0 end
local lo, hi = seq_of(first), seq_of(last)
while lo < hi do
  local mid = math.floor((lo + hi) / 2)
  if tonumber(at(mid)[2][2]) >= want then hi = mid else lo = mid + 1 end
end
return tostring(seq_of(at(lo)))
"#;

/// The scripts, compiled once (a script is sent by its SHA1; see `redis::Script`).
#[derive(Debug)]
pub struct Scripts {
    /// One append.
    pub append: redis::Script,
    /// Retention of one topic.
    pub retain: redis::Script,
    /// A read of a topic's log.
    pub read: redis::Script,
    /// A topic's counters.
    pub stats: redis::Script,
    /// The first seq at or after a time.
    pub seek: redis::Script,
}

impl Scripts {
    /// All of them; the append script publishes with `SPUBLISH` for sharded pub/sub
    /// (its channel shares the hash tag, and so the slot, of the keys it writes).
    pub fn new(pubsub: PubSubKind) -> Self {
        let append = match pubsub {
            PubSubKind::Classic => APPEND.to_string(),
            PubSubKind::Sharded => APPEND.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'"),
        };
        Scripts {
            append: redis::Script::new(&format!("{TRIM}{append}")),
            retain: redis::Script::new(&format!("{TRIM}{RETAIN}")),
            read: redis::Script::new(READ),
            stats: redis::Script::new(STATS),
            seek: redis::Script::new(SEEK),
        }
    }
}

/// What the append script answered for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored at `seq`, in log incarnation `epoch`.
    Stored {
        /// Its seq.
        seq: u64,
        /// The topic's epoch.
        epoch: u64,
    },
    /// Its message ID was stored before, at `seq`.
    Duplicate {
        /// The original's seq.
        seq: u64,
        /// The topic's epoch.
        epoch: u64,
    },
}

/// A reply that is not what the script returns.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unexpected reply from Redis: {0}")]
pub struct BadReply(pub String);

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// A decimal number in a reply.
pub fn number(v: &Value) -> Option<u64> {
    text(v)?.parse().ok()
}

fn items(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(items) => Some(items),
        _ => None,
    }
}

/// Parses the append script's reply for a run of `n` messages; the timestamp too.
pub fn appended(v: &Value, n: usize) -> Result<(Vec<Appended>, i64), BadReply> {
    let bad = || BadReply(format!("{v:?}"));
    let items = items(v).ok_or_else(bad)?;
    let [epoch, ts, results @ ..] = items else {
        return Err(bad());
    };
    let epoch = number(epoch).ok_or_else(bad)?;
    let ts = text(ts).and_then(|t| t.parse().ok()).ok_or_else(bad)?;
    if results.len() != n {
        return Err(bad());
    }
    let out = results
        .iter()
        .map(|r| match r {
            Value::Int(seq) if *seq > 0 => Ok(Appended::Stored {
                seq: *seq as u64,
                epoch,
            }),
            Value::Int(seq) if *seq < 0 => Ok(Appended::Duplicate {
                seq: seq.unsigned_abs(),
                epoch,
            }),
            _ => Err(bad()),
        })
        .collect::<Result<_, _>>()?;
    Ok((out, ts))
}

/// One stream entry as read: seq, timestamp, body.
pub type Entry = (u64, i64, Vec<u8>);

/// Parses one `XRANGE` entry: `[id, [t, ts, b, body]]`.
pub fn entry(v: &Value) -> Option<Entry> {
    let [id, fields] = items(v)? else { return None };
    let id = text(id)?;
    let seq = id.split('-').next()?.parse().ok()?;
    let [_, ts, _, body] = items(fields)? else {
        return None;
    };
    let ts = text(ts)?.parse().ok()?;
    let Value::BulkString(body) = body else {
        return None;
    };
    Some((seq, ts, body.clone()))
}

/// Parses the read script's reply: the epoch and the entries.
pub fn read(v: &Value) -> Result<(u64, Vec<Entry>), BadReply> {
    let bad = || BadReply(format!("{v:?}"));
    let [epoch, entries] = items(v).ok_or_else(bad)? else {
        return Err(bad());
    };
    let epoch = number(epoch).ok_or_else(bad)?;
    let entries = items(entries)
        .ok_or_else(bad)?
        .iter()
        .map(|e| entry(e).ok_or_else(bad))
        .collect::<Result<_, _>>()?;
    Ok((epoch, entries))
}

/// Parses the stats script's reply: the epoch (0: the topic has no counters) and the
/// stats.
pub fn stats(v: &Value) -> Result<(u64, TopicStats), BadReply> {
    let bad = || BadReply(format!("{v:?}"));
    let items = items(v).ok_or_else(bad)?;
    let [epoch, seq, ts, bytes, messages, first] = items else {
        return Err(bad());
    };
    let n = |v: &Value| number(v).ok_or_else(bad);
    let first = text(first)
        .and_then(|id| id.split('-').next()?.parse().ok())
        .ok_or_else(bad)?;
    Ok((
        n(epoch)?,
        TopicStats {
            first_seq: first,
            last_seq: n(seq)?,
            messages: n(messages)?,
            bytes: n(bytes)?,
            last_ts_ms: n(ts)? as i64,
        },
    ))
}
