//! What Redis holds for a few entities of the live generation: read in one
//! pipeline per chunk, each stamped entity framed by two reads of its stamps
//! so a write landing in between is seen.

use std::collections::BTreeMap;

use bytes::Bytes;
use fred::{clients::Client, prelude::*};
use views::{aggregate, ranking_member, Keys};

use crate::sink::queue_scored_members;

/// An entity with an aggregate hash, as Redis holds it.
#[derive(Debug, Default)]
pub(super) struct Stamped {
    /// `stamp` and `vstamp` of the aggregate, the same before and after
    /// the other reads; `None` when a write landed in between.
    pub still: Option<(String, String)>,
    pub agg: BTreeMap<String, String>,
}

/// A course's keys.
#[derive(Debug, Default)]
pub(super) struct Course {
    pub stamped: Stamped,
    pub html: Option<String>,
    /// Company → active students, from the tallies' scores.
    pub companies: BTreeMap<String, f64>,
    pub page: Option<Bytes>,
    pub stats: Option<Bytes>,
    pub card: Option<Bytes>,
    /// Scores in its category's rankings.
    pub popular: Option<f64>,
    pub newest: Option<f64>,
}

/// An event's or an order's keys.
#[derive(Debug, Default)]
pub(super) struct Record {
    pub stamped: Stamped,
    pub view: Option<Bytes>,
    /// An event's score in the pre-warming index.
    pub by_end: Option<f64>,
}

/// A category's rankings: their members.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Category {
    pub popular: Vec<String>,
    pub newest: Vec<String>,
}

/// Reads the courses `(id, category)` of `generation`.
pub(super) async fn courses(
    redis: &Client,
    keys: &Keys,
    generation: u64,
    courses: &[(i64, String)],
) -> anyhow::Result<Vec<Course>> {
    const PER_COURSE: usize = 10;
    let pipe = redis.pipeline();
    for (id, category) in courses {
        let agg = keys.course_agg(generation, *id);
        let member = ranking_member(*id);
        stamps(&pipe, &agg).await?;
        pipe.hgetall::<(), _>(&agg).await?;
        pipe.hget::<(), _, _>(
            keys.course_text(generation, *id),
            aggregate::DESCRIPTION_HTML,
        )
        .await?;
        queue_scored_members(&pipe, keys.course_companies(generation, *id)).await?;
        pipe.get::<(), _>(keys.course_view(generation, *id)).await?;
        pipe.get::<(), _>(keys.course_stats(generation, *id))
            .await?;
        pipe.get::<(), _>(keys.course_card(generation, *id)).await?;
        pipe.zscore::<(), _, _>(keys.category_popular(generation, category), member.as_str())
            .await?;
        pipe.zscore::<(), _, _>(keys.category_newest(generation, category), member.as_str())
            .await?;
        stamps(&pipe, &agg).await?;
    }
    let replies = replies(pipe, courses.len() * PER_COURSE).await?;
    Ok(replies
        .chunks_exact(PER_COURSE)
        .map(|r| Course {
            stamped: stamped(&r[0], &r[1], &r[9]),
            html: text(&r[2]),
            companies: scored(&r[3])
                .into_iter()
                .map(|(company, score)| (company, -score))
                .collect(),
            page: bytes(&r[4]),
            stats: bytes(&r[5]),
            card: bytes(&r[6]),
            popular: r[7].as_f64(),
            newest: r[8].as_f64(),
        })
        .collect())
}

/// Reads the events `ids` of `generation`.
pub(super) async fn events(
    redis: &Client,
    keys: &Keys,
    generation: u64,
    ids: &[i64],
) -> anyhow::Result<Vec<Record>> {
    let index = Some(keys.events_by_end(generation));
    let named: [KeyOf; 2] = [Keys::event_agg, Keys::event_view];
    records(redis, keys, generation, ids, named, index).await
}

/// Reads the orders `ids` of `generation`.
pub(super) async fn orders(
    redis: &Client,
    keys: &Keys,
    generation: u64,
    ids: &[i64],
) -> anyhow::Result<Vec<Record>> {
    let named: [KeyOf; 2] = [Keys::order_agg, Keys::order_view];
    records(redis, keys, generation, ids, named, None).await
}

/// How a kind names an entity's key: from the generation and the id.
type KeyOf = fn(&Keys, u64, i64) -> String;

/// Reads the records `ids` of `generation`: each one's aggregate and view
/// (keys named by `[agg, view]`) and, given an `index`, its score there.
async fn records(
    redis: &Client,
    keys: &Keys,
    generation: u64,
    ids: &[i64],
    [agg, view]: [KeyOf; 2],
    index: Option<String>,
) -> anyhow::Result<Vec<Record>> {
    let per_record = if index.is_some() { 5 } else { 4 };
    let pipe = redis.pipeline();
    for &id in ids {
        let agg = agg(keys, generation, id);
        stamps(&pipe, &agg).await?;
        pipe.hgetall::<(), _>(&agg).await?;
        pipe.get::<(), _>(view(keys, generation, id)).await?;
        if let Some(index) = &index {
            pipe.zscore::<(), _, _>(index, id.to_string()).await?;
        }
        stamps(&pipe, &agg).await?;
    }
    let replies = replies(pipe, ids.len() * per_record).await?;
    Ok(replies
        .chunks_exact(per_record)
        .map(|r| Record {
            stamped: stamped(&r[0], &r[1], &r[per_record - 1]),
            view: bytes(&r[2]),
            by_end: if index.is_some() { r[3].as_f64() } else { None },
        })
        .collect())
}

/// Reads the libraries of the users `ids`: member → score.
pub(super) async fn libraries(
    redis: &Client,
    keys: &Keys,
    generation: u64,
    ids: &[i64],
) -> anyhow::Result<Vec<BTreeMap<String, f64>>> {
    let pipe = redis.pipeline();
    for &id in ids {
        queue_scored_members(&pipe, keys.user_library(generation, id)).await?;
    }
    let replies = replies(pipe, ids.len()).await?;
    Ok(replies
        .iter()
        .map(|r| scored(r).into_iter().collect())
        .collect())
}

/// Reads the rankings of the categories `names`.
pub(super) async fn categories(
    redis: &Client,
    keys: &Keys,
    generation: u64,
    names: &[String],
) -> anyhow::Result<Vec<Category>> {
    let pipe = redis.pipeline();
    for name in names {
        for key in [
            keys.category_popular(generation, name),
            keys.category_newest(generation, name),
        ] {
            pipe.zrange::<(), _, _, _>(key, 0, -1, None, false, None, false)
                .await?;
        }
    }
    let replies = replies(pipe, names.len() * 2).await?;
    let members = |v: &Value| -> Vec<String> {
        v.clone()
            .into_array()
            .iter()
            .filter_map(Value::as_string)
            .collect()
    };
    Ok(replies
        .chunks_exact(2)
        .map(|r| Category {
            popular: members(&r[0]),
            newest: members(&r[1]),
        })
        .collect())
}

/// Sends the pipeline and checks it answered every command.
async fn replies(
    pipe: fred::clients::Pipeline<Client>,
    commands: usize,
) -> anyhow::Result<Vec<Value>> {
    let replies: Vec<Value> = pipe.all().await?;
    anyhow::ensure!(
        replies.len() == commands,
        "redis answered {} of {commands} reads",
        replies.len()
    );
    Ok(replies)
}

async fn stamps(
    pipe: &fred::clients::Pipeline<Client>,
    agg: &str,
) -> Result<(), fred::error::Error> {
    pipe.hmget::<(), _, _>(agg, vec![aggregate::STAMP, aggregate::VIEW_STAMP])
        .await
}

fn stamped(before: &Value, agg: &Value, after: &Value) -> Stamped {
    let pair = |v: &Value| -> (String, String) {
        let mut parts = v
            .clone()
            .into_array()
            .into_iter()
            .map(|p| p.as_string().unwrap_or_default());
        (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        )
    };
    let (before, after) = (pair(before), pair(after));
    let fields = agg
        .clone()
        .into_array()
        .iter()
        .filter_map(Value::as_string)
        .collect::<Vec<_>>();
    Stamped {
        still: (before == after).then_some(before),
        agg: fields
            .chunks_exact(2)
            .map(|kv| (kv[0].clone(), kv[1].clone()))
            .collect(),
    }
}

/// A `ZRANGE … WITHSCORES` reply as (member, score): flat (RESP2) or in
/// pairs (RESP3).
fn scored(reply: &Value) -> Vec<(String, f64)> {
    let items = reply.clone().into_array();
    if items.iter().all(|i| matches!(i, Value::Array(_))) {
        return items
            .into_iter()
            .filter_map(|pair| {
                let pair = pair.into_array();
                Some((pair.first()?.as_string()?, pair.get(1)?.as_f64()?))
            })
            .collect();
    }
    items
        .chunks_exact(2)
        .filter_map(|kv| Some((kv[0].as_string()?, kv[1].as_f64()?)))
        .collect()
}

fn text(value: &Value) -> Option<String> {
    if value.is_null() {
        return None;
    }
    value.as_string()
}

fn bytes(value: &Value) -> Option<Bytes> {
    if value.is_null() {
        return None;
    }
    value.clone().into_bytes()
}
