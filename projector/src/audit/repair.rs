//! `--repair`: an entity that differs is written again from the tables,
//! aggregate and views at once, with a stamp the live stream's later
//! changes pass and its earlier ones do not (`audit`'s module doc says why
//! that is exact).

use fred::{prelude::*, types::scripts::Script};
use views::{aggregate, ranking_member};

use super::{
    cut::{next_xid, Cut},
    expected::{self, Expected},
    observed, Auditor, Subject,
};
use crate::projection::stamp;

/// How often an entity is read, written and read again before the repair
/// gives up on it (it keeps changing).
const ATTEMPTS: usize = 5;

/// Replaces an entity's keys if its aggregate is older than a stamp:
///
/// ```text
/// KEYS  the entity's keys, its aggregate first (all under its hash tag)
/// ARGV  stamp ('': no check), then per key: s value | h n (field value)*n | z n (score member)*n
/// ```
///
/// Every key is deleted and written anew (`h`/`z` with n = 0: deleted). The
/// stamp is checked against the aggregate's `stamp` before anything is
/// written, in the same script, so a change the stream applied meanwhile is
/// never overwritten. Returns 1 if it wrote, 0 if the aggregate was newer.
const REPLACE: &str = r#"
local stamp = ARGV[1]
if stamp ~= '' and (redis.call('HGET', KEYS[1], 'stamp') or '') >= stamp then
  return 0
end
local a = 2
for k = 1, #KEYS do
  local op = ARGV[a]
  redis.call('DEL', KEYS[k])
  if op == 's' then
    redis.call('SET', KEYS[k], ARGV[a + 1])
    a = a + 2
  else
    local last = a + 1 + 2 * tonumber(ARGV[a + 1])
    local command = 'HSET'
    if op == 'z' then command = 'ZADD' end
    for i = a + 2, last, 1000 do
      redis.call(command, KEYS[k], unpack(ARGV, i, math.min(i + 999, last)))
    end
    a = last + 1
  end
end
return 1
"#;

/// What one key of [`REPLACE`] becomes.
enum Write {
    /// A view: its JSON, encoded as Redis stores views.
    View(Vec<u8>),
    Hash(Vec<(String, String)>),
    /// A sorted set: (score, member).
    Sorted(Vec<(f64, String)>),
}

/// [`REPLACE`]'s arguments for `writes`, one per key.
fn replace_args(stamp: &str, writes: Vec<Write>) -> Vec<Value> {
    let mut args: Vec<Value> = vec![stamp.into()];
    for write in writes {
        match write {
            Write::View(json) => {
                args.push("s".into());
                args.push(Value::Bytes(views::encode(&json).into()));
            }
            Write::Hash(fields) => {
                args.push("h".into());
                args.push((fields.len() as i64).into());
                for (k, v) in fields {
                    args.push(k.into());
                    args.push(v.into());
                }
            }
            Write::Sorted(members) => {
                args.push("z".into());
                args.push((members.len() as i64).into());
                for (score, member) in members {
                    args.push(score.into());
                    args.push(member.into());
                }
            }
        }
    }
    args
}

/// What a repair of one entity came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repaired {
    /// Written from the tables, and the tables had not changed meanwhile.
    Done,
    /// It kept changing (or the stream kept passing it): left as it was.
    GaveUp,
    /// It could not be written (the reason).
    Failed(String),
}

impl Auditor<'_> {
    /// Writes `subject` anew from the tables until a later snapshot shows
    /// the tables did not change around the write (see `audit`'s module doc).
    pub(super) async fn repair(&self, subject: &Subject) -> anyhow::Result<Repaired> {
        let script = Script::from_lua(REPLACE);
        for _ in 0..ATTEMPTS {
            let subjects = std::slice::from_ref(subject);
            let cut = Cut::open(self.snap, 0, self.deadline()).await?;
            let read = async {
                let want = expected::read(cut.pg(), subject.kind(), subjects).await?;
                let versions = expected::versions(cut.pg(), subject.kind(), subjects).await?;
                anyhow::Ok((want, versions))
            }
            .await;
            let lsn = cut.lsn;
            cut.close().await?;
            let (before, versions) = read?;
            // Every change the snapshot holds committed before `lsn`: below
            // this stamp. Every later one is above it.
            let written = self
                .write(&script, subject, &before, &stamp(lsn, 0))
                .await?;
            if !written {
                // The stream already applied a change past the snapshot:
                // read again, later.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
            let horizon = next_xid(self.control).await?;
            let cut = Cut::open(self.snap, horizon, self.deadline()).await?;
            let after = expected::versions(cut.pg(), subject.kind(), subjects).await;
            cut.close().await?;
            // Row versions, not values: an order and its cancel between the
            // two reads leave the same values, yet the order may be one the
            // write's stamp made the stream skip.
            if after? == versions {
                return Ok(Repaired::Done);
            }
        }
        Ok(Repaired::GaveUp)
    }

    /// Writes the entity as `want` says; `false` if its aggregate in Redis
    /// is already at or past `stamp`.
    async fn write(
        &self,
        script: &Script,
        subject: &Subject,
        want: &Expected,
        stamp: &str,
    ) -> anyhow::Result<bool> {
        let (keys, g) = (self.keys, self.generation);
        let stamps = |mut fields: Vec<(String, String)>| {
            fields.push((aggregate::STAMP.to_owned(), stamp.to_owned()));
            fields.push((aggregate::VIEW_STAMP.to_owned(), stamp.to_owned()));
            fields
        };
        match subject {
            Subject::Course(id) => {
                let Some(course) = want.courses.get(id) else {
                    anyhow::bail!("course {id} is not in the tables");
                };
                let Some(views) = course.render(*id, stamp, &want.terms) else {
                    anyhow::bail!("course {id} does not render (a field is malformed)");
                };
                let ranked: Option<String> = self
                    .redis
                    .hget(keys.course_agg(g, *id), aggregate::RANKED_CATEGORY)
                    .await?;
                let tallies = course
                    .tallies
                    .iter()
                    .map(|(company, n)| (-(*n as f64), company.clone()))
                    .collect();
                let written = self
                    .replace(
                        script,
                        stamp,
                        vec![
                            keys.course_agg(g, *id),
                            keys.course_text(g, *id),
                            keys.course_companies(g, *id),
                            keys.course_view(g, *id),
                            keys.course_stats(g, *id),
                            keys.course_card(g, *id),
                        ],
                        vec![
                            Write::Hash(stamps(course.agg.clone().into_iter().collect())),
                            Write::Hash(vec![(
                                aggregate::DESCRIPTION_HTML.to_owned(),
                                course.html.clone(),
                            )]),
                            Write::Sorted(tallies),
                            Write::View(views.page),
                            Write::View(views.stats),
                            Write::View(views.card),
                        ],
                    )
                    .await?;
                if written {
                    self.rank(*id, course, ranked.as_deref()).await?;
                }
                Ok(written)
            }
            Subject::Event(id) => {
                let Some(event) = want.events.get(id) else {
                    anyhow::bail!("event {id} is not in the tables");
                };
                let Some(view) = event.render_event(*id, stamp) else {
                    anyhow::bail!("event {id} does not render (a field is malformed)");
                };
                let written = self
                    .replace(
                        script,
                        stamp,
                        vec![keys.event_agg(g, *id), keys.event_view(g, *id)],
                        vec![
                            Write::Hash(stamps(event.agg.clone().into_iter().collect())),
                            Write::View(view),
                        ],
                    )
                    .await?;
                if let (true, Some(ends)) = (written, event.ends_us()) {
                    self.redis
                        .zadd::<(), _, _>(
                            keys.events_by_end(g),
                            None,
                            None,
                            false,
                            false,
                            (ends as f64, id.to_string()),
                        )
                        .await?;
                }
                Ok(written)
            }
            Subject::Order(id) => {
                let Some(order) = want.orders.get(id) else {
                    anyhow::bail!("order {id} is not in the tables");
                };
                let Some(view) = order.render_order(*id, stamp) else {
                    anyhow::bail!("order {id} does not render (a field is malformed)");
                };
                self.replace(
                    script,
                    stamp,
                    vec![keys.order_agg(g, *id), keys.order_view(g, *id)],
                    vec![
                        Write::Hash(stamps(order.agg.clone().into_iter().collect())),
                        Write::View(view),
                    ],
                )
                .await
            }
            Subject::Library(user) => {
                let entries = want
                    .libraries
                    .get(user)
                    .map(|courses| {
                        courses
                            .iter()
                            .map(|(course, at)| (*at as f64, ranking_member(*course)))
                            .collect()
                    })
                    .unwrap_or_default();
                // A set written whole, with no stamp: the later snapshot
                // shows whether a change slipped in around it.
                self.replace(
                    script,
                    "",
                    vec![keys.user_library(g, *user)],
                    vec![Write::Sorted(entries)],
                )
                .await
            }
            Subject::Category(name) => {
                let members = want.categories.get(name).cloned().unwrap_or_default();
                let listed = observed::categories(self.redis, keys, g, std::slice::from_ref(name))
                    .await?
                    .pop()
                    .unwrap_or_default();
                let extra: Vec<String> = listed
                    .popular
                    .iter()
                    .chain(&listed.newest)
                    .filter(|m| !m.parse().is_ok_and(|id: i64| members.contains(&id)))
                    .cloned()
                    .collect();
                if !extra.is_empty() {
                    for key in [
                        keys.category_popular(g, name),
                        keys.category_newest(g, name),
                    ] {
                        self.redis.zrem::<(), _, _>(key, extra.clone()).await?;
                    }
                }
                // A course the rankings miss is ranked by repairing it.
                let ranked: std::collections::BTreeSet<i64> = listed
                    .popular
                    .iter()
                    .filter(|m| listed.newest.contains(m))
                    .filter_map(|m| m.parse().ok())
                    .collect();
                for id in members.difference(&ranked) {
                    if Box::pin(self.repair(&Subject::Course(*id))).await? == Repaired::GaveUp {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        }
    }

    /// Runs [`REPLACE`].
    async fn replace(
        &self,
        script: &Script,
        stamp: &str,
        keys: Vec<String>,
        writes: Vec<Write>,
    ) -> anyhow::Result<bool> {
        let written: i64 = script
            .evalsha_with_reload(self.redis, keys, replace_args(stamp, writes))
            .await?;
        Ok(written == 1)
    }

    /// The course's places in its category's rankings (absolute writes, as
    /// the stream's), and out of the category it was ranked in before.
    async fn rank(
        &self,
        id: i64,
        course: &expected::Course,
        ranked: Option<&str>,
    ) -> anyhow::Result<()> {
        let (keys, g) = (self.keys, self.generation);
        let category = course.category();
        let member = ranking_member(id);
        let pipe = self.redis.pipeline();
        pipe.zadd::<(), _, _>(
            keys.category_popular(g, category),
            None,
            None,
            false,
            false,
            (-(course.students() as f64), member.clone()),
        )
        .await?;
        if let Some(created) = course.created_us() {
            pipe.zadd::<(), _, _>(
                keys.category_newest(g, category),
                None,
                None,
                false,
                false,
                (created as f64, member.clone()),
            )
            .await?;
        }
        if let Some(old) = ranked.filter(|old| *old != category) {
            pipe.zrem::<(), _, _>(keys.category_popular(g, old), member.clone())
                .await?;
            pipe.zrem::<(), _, _>(keys.category_newest(g, old), member)
                .await?;
        }
        pipe.all::<()>().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_replace_script_names_the_stamp_field_and_its_own_ops_only() {
        let literals: BTreeSet<&str> = REPLACE
            .split('\'')
            .skip(1)
            .step_by(2)
            .filter(|l| !l.is_empty() && l.bytes().any(|b| !b.is_ascii_uppercase()))
            .collect();
        assert_eq!(literals, BTreeSet::from([aggregate::STAMP, "s", "z"]));
    }

    #[test]
    fn replace_arguments_give_each_key_its_op_and_count() {
        let args = replace_args(
            "S",
            vec![
                Write::Hash(vec![("n".into(), "2".into())]),
                Write::View(b"{}".to_vec()),
                Write::Sorted(vec![(-3.0, "acme".into())]),
                Write::Sorted(Vec::new()),
            ],
        );
        let text: Vec<String> = args
            .iter()
            .map(|v| v.as_str().map(|s| s.into_owned()).unwrap_or_default())
            .collect();
        let view = String::from_utf8_lossy(&views::encode(b"{}")).into_owned();
        #[rustfmt::skip]
        let expected = [
            "S",
            "h", "1", "n", "2",
            "s", &view,
            "z", "1", "-3", "acme",
            "z", "0",
        ];
        assert_eq!(text, expected);
    }
}
