//! The views script: the Lua that applies changes and writes views, and the
//! typed encoder of its arguments, so both sides of the layout live here.
//!
//! One `EVALSHA` runs a batch of calls, each on one entity (all keys of a
//! call share its hash tag): KEYS holds every call's keys in order, ARGV
//! every call's `kind nkeys nargs arg*`. The layout, stated once:
//!
//! ```text
//! kind              KEYS                             args
//! a  apply          agg companies text view          flags vstamp view entry*
//! k  apply_known    agg companies text stats card    stamp stats card entry*
//! w  write_views    agg view-key*                    stamp view*   (one view per view key)
//!
//! entry  stamp e delta company event    company, event: empty if none
//!        stamp f n (field value)*n
//! flags  p: return description_html too; t: every company tally (else the top five)
//! ```
//!
//! Entries newer than the aggregate's `stamp` are applied; views are
//! written only over older ones (`vstamp`). The script returns each call's
//! result in order: `apply` the aggregate and tallies (0 if it wrote the
//! view itself), the others 1 if they wrote, else 0.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use fred::prelude::*;

use crate::projection::Entry;

/// The loop both apply functions share: applies the entries in
/// ARGV[first..stop] newer than `last`, moving `last` to each one applied.
macro_rules! apply_entries {
    () => {
        r#"
  local i = first
  while i <= stop do
    local stamp, kind = ARGV[i], ARGV[i + 1]
    if kind == 'e' then
      if stamp > last then
        local delta = tonumber(ARGV[i + 2])
        redis.call('HINCRBY', agg, 'n', delta)
        local company = ARGV[i + 3]
        if company ~= '' then
          local score = tonumber(redis.call('ZINCRBY', companies, -delta, company))
          if score >= 0 then redis.call('ZREM', companies, company) end
        end
        if ARGV[i + 4] ~= '' then
          redis.call('HINCRBY', agg, 'cl:' .. ARGV[i + 4], delta)
        end
        last = stamp
      end
      i = i + 5
    else
      local n = tonumber(ARGV[i + 2])
      if stamp > last then
        local pairs = {}
        for j = 0, n - 1 do
          local field, value = ARGV[i + 3 + 2 * j], ARGV[i + 4 + 2 * j]
          if field == 'description_html' then
            redis.call('HSET', text, field, value)
          else
            pairs[#pairs + 1] = field
            pairs[#pairs + 1] = value
          end
        end
        if #pairs > 0 then redis.call('HSET', agg, unpack(pairs)) end
        last = stamp
      end
      i = i + 3 + 2 * n
    end
  end
"#
    };
}

/// The one script that writes views (see the module's layout). A batch
/// costs one command however many calls it holds: fred flushes its socket
/// after every script command, so one command per entity was one system
/// call per entity.
pub(super) const VIEWS: &str = concat!(
    r#"
local function apply(k, a, stop)
  local agg, companies, text, view = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local flags, vstamp, value = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local last = redis.call('HGET', agg, 'stamp') or ''
  local stored = last
  local first = a + 3
"#,
    apply_entries!(),
    r#"
  if last ~= stored then redis.call('HSET', agg, 'stamp', last) end
  if vstamp ~= '' then
    if vstamp > (redis.call('HGET', agg, 'vstamp') or '') then
      redis.call('SET', view, value)
      redis.call('HSET', agg, 'vstamp', vstamp)
    end
    return 0
  end
  local out = redis.call('HGETALL', agg)
  if string.find(flags, 'p', 1, true) then
    local html = redis.call('HGET', text, 'description_html')
    if html then
      out[#out + 1] = 'description_html'
      out[#out + 1] = html
    end
  end
  local top = 4
  if string.find(flags, 't', 1, true) then top = -1 end
  return {out, redis.call('ZRANGE', companies, 0, top, 'WITHSCORES')}
end

local function apply_known(k, a, stop)
  local agg, companies, text, stats, card = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local last = redis.call('HGET', agg, 'stamp') or ''
  if last ~= ARGV[a] then return 0 end
  local first = a + 3
"#,
    apply_entries!(),
    r#"
  redis.call('HSET', agg, 'stamp', last, 'vstamp', last)
  redis.call('MSET', stats, ARGV[a + 1], card, ARGV[a + 2])
  return 1
end

local function write_views(k, nk, a)
  if ARGV[a] > (redis.call('HGET', KEYS[k], 'vstamp') or '') then
    local pairs = {}
    for j = 1, nk - 1 do
      pairs[#pairs + 1] = KEYS[k + j]
      pairs[#pairs + 1] = ARGV[a + j]
    end
    redis.call('MSET', unpack(pairs))
    redis.call('HSET', KEYS[k], 'vstamp', ARGV[a])
    return 1
  end
  return 0
end

local out, k, a = {}, 1, 1
while a <= #ARGV do
  local kind, nk, na = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  if kind == 'a' then
    out[#out + 1] = apply(k, a, a + na - 1)
  elseif kind == 'k' then
    out[#out + 1] = apply_known(k, a, a + na - 1)
  else
    out[#out + 1] = write_views(k, nk, a)
  end
  k = k + nk
  a = a + na
end
return out
"#
);

/// Call kinds, entry tags and flags, as the script reads them.
const APPLY: &[u8] = b"a";
const APPLY_KNOWN: &[u8] = b"k";
const WRITE_VIEWS: &[u8] = b"w";
const ENROLL: &[u8] = b"e";
const FIELDS: &[u8] = b"f";
const PAGE_FLAG: u8 = b'p';
const TALLIES_FLAG: u8 = b't';

/// One call of the views script, encoded as the module's layout says.
pub(super) enum Call<'a> {
    /// Applies `entries` and returns the aggregate; with `view` (its stamp
    /// and JSON, rendered from the entries alone), writes it instead.
    Apply {
        keys: &'a [String; 4],
        flags: Flags,
        view: Option<(&'a str, &'a [u8])>,
        entries: &'a [Entry],
    },
    /// Applies a known course's `entries` only if Redis is at `stamp`, and
    /// writes the `stats` and `card` rendered from the state after them.
    ApplyKnown {
        keys: &'a [String; 5],
        stamp: &'a str,
        stats: &'a [u8],
        card: &'a [u8],
        entries: &'a [Entry],
    },
    /// Writes `views` to the keys after the aggregate's (the first), if
    /// `stamp` is newer than the views stored.
    WriteViews {
        keys: &'a [String],
        stamp: &'a str,
        views: &'a [Vec<u8>],
    },
}

/// What the apply call returns besides the aggregate's fields.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Flags {
    /// The page's HTML (the row changed, so the page is rewritten).
    pub page: bool,
    /// Every company tally, not the top five (a course, to be remembered).
    pub tallies: bool,
}

impl Flags {
    fn arg(self, buf: &mut ArgBuf) -> Value {
        let mut flags = [0; 2];
        let mut len = 0;
        for (set, flag) in [(self.page, PAGE_FLAG), (self.tallies, TALLIES_FLAG)] {
            if set {
                flags[len] = flag;
                len += 1;
            }
        }
        buf.bytes(&flags[..len])
    }
}

impl Call<'_> {
    fn kind(&self) -> &'static [u8] {
        match self {
            Call::Apply { .. } => APPLY,
            Call::ApplyKnown { .. } => APPLY_KNOWN,
            Call::WriteViews { .. } => WRITE_VIEWS,
        }
    }

    fn keys(&self) -> &[String] {
        match self {
            Call::Apply { keys, .. } => *keys,
            Call::ApplyKnown { keys, .. } => *keys,
            Call::WriteViews { keys, .. } => keys,
        }
    }

    /// Appends the call's arguments (after `kind nkeys nargs`).
    fn args(&self, buf: &mut ArgBuf, args: &mut Vec<Value>) {
        match *self {
            Call::Apply {
                flags,
                view,
                entries,
                ..
            } => {
                args.push(flags.arg(buf));
                match view {
                    Some((stamp, json)) => {
                        args.push(buf.text(stamp));
                        args.push(buf.view(json));
                    }
                    None => {
                        args.push(ArgBuf::EMPTY);
                        args.push(ArgBuf::EMPTY);
                    }
                }
                entry_args(buf, args, entries);
            }
            Call::ApplyKnown {
                stamp,
                stats,
                card,
                entries,
                ..
            } => {
                args.push(buf.text(stamp));
                args.push(buf.view(stats));
                args.push(buf.view(card));
                entry_args(buf, args, entries);
            }
            Call::WriteViews { keys, stamp, views } => {
                debug_assert_eq!(keys.len(), views.len() + 1, "one view per view key");
                args.push(buf.text(stamp));
                for json in views {
                    args.push(buf.view(json));
                }
            }
        }
    }
}

/// Appends entries: `stamp e delta company event` or `stamp f n (field value)*n`.
fn entry_args(buf: &mut ArgBuf, args: &mut Vec<Value>, entries: &[Entry]) {
    for entry in entries {
        match entry {
            Entry::Enroll {
                stamp,
                delta,
                company,
                event_id,
            } => {
                args.push(buf.text(stamp));
                args.push(Value::Bytes(Bytes::from_static(ENROLL)));
                args.push(buf.int(*delta));
                args.push(buf.text(company.as_deref().unwrap_or_default()));
                args.push(match event_id {
                    Some(event) => buf.int(*event),
                    None => ArgBuf::EMPTY,
                });
            }
            Entry::Fields { stamp, fields } => {
                args.push(buf.text(stamp));
                args.push(Value::Bytes(Bytes::from_static(FIELDS)));
                args.push(buf.int(fields.len() as i64));
                for (k, v) in fields {
                    args.push(buf.text(k));
                    args.push(buf.text(v));
                }
            }
        }
    }
}

/// Calls gathered for one `EVALSHA` of the views script.
#[derive(Default)]
pub(super) struct ScriptBatch {
    keys: Vec<Value>,
    args: Vec<Value>,
    calls: usize,
}

impl ScriptBatch {
    /// Adds `call`'s keys and `kind nkeys nargs arg*`.
    pub(super) fn push(&mut self, buf: &mut ArgBuf, call: &Call<'_>) {
        let keys = call.keys();
        self.args
            .push(Value::Bytes(Bytes::from_static(call.kind())));
        self.args.push(buf.int(keys.len() as i64));
        let count_at = self.args.len();
        self.args.push(ArgBuf::EMPTY);
        self.keys.extend(keys.iter().map(|key| buf.text(key)));
        call.args(buf, &mut self.args);
        self.args[count_at] = buf.int((self.args.len() - count_at - 1) as i64);
        self.calls += 1;
    }

    /// Calls gathered since the last [`ScriptBatch::take_evalsha`].
    pub(super) fn calls(&self) -> usize {
        self.calls
    }

    /// Arguments (ARGV) gathered so far.
    pub(super) fn args(&self) -> usize {
        self.args.len()
    }

    /// The `EVALSHA` arguments (`sha numkeys KEYS ARGV`); the batch is empty after.
    pub(super) fn take_evalsha(&mut self, sha: &Value, buf: &mut ArgBuf) -> Vec<Value> {
        let mut all = Vec::with_capacity(2 + self.keys.len() + self.args.len());
        all.push(sha.clone());
        all.push(buf.int(self.keys.len() as i64));
        all.append(&mut self.keys);
        all.append(&mut self.args);
        self.calls = 0;
        all
    }
}

/// The arguments of a flush's commands, written into shared blocks and
/// handed to fred as slices of them: fred's pipeline clones every command,
/// and the first clone of an owned `String` or `Vec` allocates, while a
/// slice of a shared block only counts a reference.
pub(super) struct ArgBuf(BytesMut);

impl ArgBuf {
    /// Bytes per block: one allocation for hundreds of arguments.
    const BLOCK: usize = 64 * 1024;
    const EMPTY: Value = Value::Bytes(Bytes::new());

    pub(super) fn new() -> Self {
        Self(BytesMut::with_capacity(Self::BLOCK))
    }

    /// What was written since the last argument, as one argument.
    fn take(&mut self) -> Value {
        Value::Bytes(self.0.split().freeze())
    }

    fn bytes(&mut self, bytes: &[u8]) -> Value {
        if bytes.is_empty() {
            return Self::EMPTY;
        }
        self.0.extend_from_slice(bytes);
        self.take()
    }

    fn text(&mut self, text: &str) -> Value {
        self.bytes(text.as_bytes())
    }

    fn int(&mut self, n: i64) -> Value {
        self.bytes(itoa::Buffer::new().format(n).as_bytes())
    }

    /// A view's JSON, encoded as Redis stores it.
    fn view(&mut self, json: &[u8]) -> Value {
        views::encode_with(json, |part| self.0.extend_from_slice(part));
        self.take()
    }
}

/// An aggregate hash and its company tallies (with their counts), as the
/// apply call returns them.
pub(super) type AggReply = (HashMap<String, String>, Vec<(String, i64)>);

/// A reply of the views script that is not what the call returns.
#[derive(Debug)]
pub(super) struct BadReply(pub(super) &'static str);

/// Reads the apply call's reply (also the shape of `HGETALL` + `ZRANGE`).
pub(super) fn parse_apply_reply(reply: Value) -> Result<AggReply, BadReply> {
    let bad = BadReply;
    let Value::Array(mut parts) = reply else {
        return Err(bad("apply reply is not an array"));
    };
    if parts.len() != 2 {
        return Err(bad("apply reply has not two parts"));
    }
    let top = parts.pop().and_then(|v| {
        v.into_array()
            .into_iter()
            .map(|v| v.as_string())
            .collect::<Option<Vec<_>>>()
    });
    let agg = parts.pop().and_then(|v| {
        v.into_array()
            .into_iter()
            .map(|v| v.as_string())
            .collect::<Option<Vec<_>>>()
    });
    let (Some(agg), Some(top)) = (agg, top) else {
        return Err(bad("apply reply holds a non-string"));
    };
    let agg = agg
        .chunks_exact(2)
        .map(|kv| (kv[0].clone(), kv[1].clone()))
        .collect();
    let top = top
        .chunks_exact(2)
        .map(|kv| {
            let score: f64 = kv[1].parse().unwrap_or(0.0);
            (kv[0].clone(), (-score) as i64)
        })
        .collect();
    Ok((agg, top))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use views::aggregate;

    use super::*;

    fn texts(values: &[Value]) -> Vec<String> {
        values
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes().unwrap_or_default()).into_owned())
            .collect()
    }

    fn strings<const N: usize>(texts: [&str; N]) -> [String; N] {
        texts.map(str::to_owned)
    }

    fn evalsha(batch: &mut ScriptBatch, buf: &mut ArgBuf) -> Vec<String> {
        texts(&batch.take_evalsha(&Value::from("SHA"), buf))
    }

    #[test]
    fn an_apply_call_sends_its_keys_then_kind_counts_flags_and_entries() {
        let (mut buf, mut batch) = (ArgBuf::new(), ScriptBatch::default());
        let entries = [
            Entry::Fields {
                stamp: "S1".into(),
                fields: vec![("title".into(), "Rust".into())],
            },
            Entry::Enroll {
                stamp: "S2".into(),
                delta: 1,
                company: Some("Acme".into()),
                event_id: Some(4),
            },
            Entry::Enroll {
                stamp: "S3".into(),
                delta: -1,
                company: None,
                event_id: None,
            },
        ];
        let call = Call::Apply {
            keys: &strings(["agg", "companies", "text", "view"]),
            flags: Flags {
                page: true,
                tallies: true,
            },
            view: None,
            entries: &entries,
        };
        batch.push(&mut buf, &call);
        assert_eq!((batch.calls(), batch.args()), (1, 21));
        #[rustfmt::skip]
        let expected = [
            "SHA", "4", "agg", "companies", "text", "view",
            "a", "4", "18", "pt", "", "",
            "S1", "f", "1", "title", "Rust",
            "S2", "e", "1", "Acme", "4",
            "S3", "e", "-1", "", "",
        ];
        assert_eq!(evalsha(&mut batch, &mut buf), expected);
        assert_eq!((batch.calls(), batch.args()), (0, 0));
    }

    #[test]
    fn an_apply_call_with_its_view_sends_the_view_encoded_and_no_flags() {
        let (mut buf, mut batch) = (ArgBuf::new(), ScriptBatch::default());
        let json = br#"{"id":7}"#;
        let entries = [Entry::Fields {
            stamp: "S5".into(),
            fields: vec![
                ("status".into(), "paid".into()),
                ("user_id".into(), "3".into()),
            ],
        }];
        let call = Call::Apply {
            keys: &strings(["agg", "none", "none", "view"]),
            flags: Flags::default(),
            view: Some(("S5", json)),
            entries: &entries,
        };
        batch.push(&mut buf, &call);
        let view = String::from_utf8_lossy(&views::encode(json)).into_owned();
        #[rustfmt::skip]
        let expected = [
            "SHA", "4", "agg", "none", "none", "view",
            "a", "4", "10", "", "S5", &view,
            "S5", "f", "2", "status", "paid", "user_id", "3",
        ];
        assert_eq!(evalsha(&mut batch, &mut buf), expected);
        let mut flags = |page, tallies| texts(&[Flags { page, tallies }.arg(&mut buf)]);
        assert_eq!(flags(true, false), ["p"]);
        assert_eq!(flags(false, true), ["t"]);
    }

    #[test]
    fn calls_of_one_batch_follow_each_other_in_keys_and_arguments() {
        let (mut buf, mut batch) = (ArgBuf::new(), ScriptBatch::default());
        let (stats, card, page) = (br#"{"s":1}"#, br#"{"c":2}"#, br#"{"p":3}"#);
        let entries = [Entry::Enroll {
            stamp: "S8".into(),
            delta: 2,
            company: None,
            event_id: Some(9),
        }];
        batch.push(
            &mut buf,
            &Call::ApplyKnown {
                keys: &strings(["c1:agg", "c1:companies", "c1:text", "c1:stats", "c1:card"]),
                stamp: "S7",
                stats,
                card,
                entries: &entries,
            },
        );
        let values = [stats.to_vec(), page.to_vec()];
        batch.push(
            &mut buf,
            &Call::WriteViews {
                keys: &strings(["c2:agg", "c2:stats", "c2:view"]),
                stamp: "S6",
                views: &values,
            },
        );
        assert_eq!(batch.calls(), 2);
        let encoded = |json: &[u8]| String::from_utf8_lossy(&views::encode(json)).into_owned();
        let (stats, card, page) = (encoded(stats), encoded(card), encoded(page));
        #[rustfmt::skip]
        let expected = [
            "SHA", "8",
            "c1:agg", "c1:companies", "c1:text", "c1:stats", "c1:card",
            "c2:agg", "c2:stats", "c2:view",
            "k", "5", "8", "S7", &stats, &card, "S8", "e", "2", "", "9",
            "w", "3", "3", "S6", &stats, &page,
        ];
        assert_eq!(evalsha(&mut batch, &mut buf), expected);
    }

    /// Every quoted literal of the Lua text.
    fn lua_literals() -> BTreeSet<&'static str> {
        VIEWS.split('\'').skip(1).step_by(2).collect()
    }

    #[test]
    fn the_lua_names_the_shared_hash_fields_and_nothing_else() {
        let fields = [
            aggregate::STAMP,
            aggregate::VIEW_STAMP,
            aggregate::STUDENTS,
            aggregate::CLAIMED_PREFIX,
            aggregate::DESCRIPTION_HTML,
        ];
        let protocol = [APPLY, APPLY_KNOWN, ENROLL, &[PAGE_FLAG], &[TALLIES_FLAG]]
            .map(|tag| std::str::from_utf8(tag).expect("ascii tags"));
        // Redis commands and options are the upper-case literals; `''` is
        // an absent argument.
        let named: BTreeSet<&str> = lua_literals()
            .into_iter()
            .filter(|l| !l.is_empty() && l.bytes().any(|b| !b.is_ascii_uppercase()))
            .collect();
        let expected: BTreeSet<&str> = fields.into_iter().chain(protocol).collect();
        assert_eq!(named, expected);
        // The script tells the last kind and tag by elimination.
        assert!(![APPLY, APPLY_KNOWN].contains(&WRITE_VIEWS));
        assert_ne!(FIELDS, ENROLL);
        assert!(
            VIEWS.contains("'cl:' .. ARGV[i + 4]"),
            "claims are `cl:<event>`"
        );
    }
}
