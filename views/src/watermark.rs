//! How a generation's watermark ([`crate::Keys::watermark`]) moves: by
//! compare-and-set, on the very server the writer started with. A Redis that
//! went back in time (restarted, restored from an older dump, failed over)
//! or another writer is then noticed by the next write instead of hidden by
//! it. The projector is the writer; readers only GET the watermark.

use fred::types::Value;

use crate::Lsn;

/// Moves the watermark KEYS[1] from ARGV[1] (what the writer wrote last) to
/// ARGV[2] only while the server's `run_id` is ARGV[3] (the same process,
/// so it lost nothing since the writer started) and it holds ARGV[1], or
/// ARGV[2] (a retried call that had already written). `INFO` in a script
/// needs Redis 5 or later (effects replication). Replies {1} when moved,
/// else {0, run_id, stored} and writes nothing. Arguments: [`advance_args`].
pub const ADVANCE: &str = r#"
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or ''
local stored = redis.call('GET', KEYS[1])
if run_id == ARGV[3] and (stored == ARGV[1] or stored == ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[2])
  return {1}
end
return {0, run_id, stored or ''}
"#;

/// [`ADVANCE`]'s arguments, in order.
pub fn advance_args(from: Lsn, to: Lsn, run_id: &str) -> Vec<String> {
    vec![from.to_string(), to.to_string(), run_id.to_owned()]
}

/// What [`ADVANCE`] answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advanced {
    /// The watermark holds the new value.
    Moved,
    /// Nothing was written: the server's `run_id` now, and the watermark it
    /// holds (`None`: none, or not an LSN).
    Refused { run_id: String, stored: Option<Lsn> },
}

impl Advanced {
    /// Reads [`ADVANCE`]'s reply.
    pub fn from_reply(reply: Vec<Value>) -> Self {
        let mut reply = reply.into_iter();
        if reply.next().and_then(|v| v.as_i64()) == Some(1) {
            return Advanced::Moved;
        }
        let run_id = reply.next().and_then(|v| v.as_string()).unwrap_or_default();
        let stored = reply
            .next()
            .and_then(|v| v.as_string())
            .and_then(|s| s.parse().ok());
        Advanced::Refused { run_id, stored }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_read_as_moved_or_refused_with_what_the_server_holds() {
        assert_eq!(
            Advanced::from_reply(vec![Value::Integer(1)]),
            Advanced::Moved
        );
        assert_eq!(
            Advanced::from_reply(vec![
                Value::Integer(0),
                Value::from("abc"),
                Value::from("0/16B3748"),
            ]),
            Advanced::Refused {
                run_id: "abc".into(),
                stored: Some(Lsn(0x16B3748))
            }
        );
        assert_eq!(
            Advanced::from_reply(vec![Value::Integer(0), Value::from("abc"), Value::from("")]),
            Advanced::Refused {
                run_id: "abc".into(),
                stored: None
            }
        );
        assert_eq!(advance_args(Lsn(1), Lsn(0x10), "r"), ["0/1", "0/10", "r"]);
    }
}
