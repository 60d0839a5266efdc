//! The Redis key layout, in one place for both sides.
//!
//! ```text
//! {P}:meta:generation            string  JSON GenerationMarker: the live generation
//! {P}:meta:g{N}:watermark        string  LSN text: every change up to it is applied in g{N}
//! {P}:g{N}:{c{ID}}:view          string  course detail view (format byte + payload)
//! {P}:g{N}:{c{ID}}:agg           hash    course row fields, student count, stamp
//! {P}:g{N}:{c{ID}}:companies     zset    company -> minus its active students
//! ```
//!
//! `{P}` is `KEY_PREFIX`. Keys of one entity share the hash tag `{c<id>}` so a
//! Lua script may touch them together in Redis Cluster. A generation `g{N}` is
//! one complete set of views; readers follow the marker to the live one.

/// Default `KEY_PREFIX`.
pub const DEFAULT_KEY_PREFIX: &str = "cqrs";

/// Builds every key name from the configured prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// A key layout under `prefix` (without the trailing colon).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The configured prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The marker naming the live generation; absent while none is live.
    pub fn generation_marker(&self) -> String {
        format!("{}:meta:generation", self.prefix)
    }

    /// The applied-LSN watermark of generation `generation`.
    pub fn watermark(&self, generation: u64) -> String {
        format!("{}:meta:g{generation}:watermark", self.prefix)
    }

    /// The counter handing out generation numbers.
    pub fn generation_counter(&self) -> String {
        format!("{}:meta:generation-counter", self.prefix)
    }

    /// A pattern matching every key of generation `generation` (for deletion).
    pub fn generation_pattern(&self, generation: u64) -> String {
        format!("{}:g{generation}:*", self.prefix)
    }

    /// The course detail view of course `id`.
    pub fn course_view(&self, generation: u64, id: i64) -> String {
        format!("{}:g{generation}:{{c{id}}}:view", self.prefix)
    }

    /// The course aggregate hash (row fields, active student count, stamp).
    pub fn course_agg(&self, generation: u64, id: i64) -> String {
        format!("{}:g{generation}:{{c{id}}}:agg", self.prefix)
    }

    /// The course's company tallies (sorted set, score = minus students).
    pub fn course_companies(&self, generation: u64, id: i64) -> String {
        format!("{}:g{generation}:{{c{id}}}:companies", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_keys_share_one_hash_tag_and_the_prefix() {
        let k = Keys::new("shop");
        let (v, a, c) = (
            k.course_view(3, 42),
            k.course_agg(3, 42),
            k.course_companies(3, 42),
        );
        for key in [&v, &a, &c] {
            assert!(key.starts_with("shop:"), "{key}");
            assert!(key.contains("{c42}"), "{key}");
        }
        assert_eq!(v, "shop:g3:{c42}:view");
        assert!(k.generation_marker().starts_with("shop:meta:"));
        assert!(k.watermark(3).starts_with("shop:meta:"));
    }
}
