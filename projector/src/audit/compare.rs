//! What Redis holds against what the tables say, field by field. Stamps
//! and a view's `lsn` are the projector's bookkeeping, not data, so they are
//! not compared.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value as Json;
use views::{aggregate, ranking_member};

use super::{
    expected::{self, is_counter, without_zero_counters},
    observed,
};
use crate::projection::EventTerms;

/// One field that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Where: `agg.<field>`, `text.description_html`, `companies.<name>`,
    /// `view.<field>`, `stats.<field>`, `card.<field>`, `ranking.popular`,
    /// `ranking.newest`, `index.by-end`, `library.<course id>`,
    /// `popular.<course id>`, `newest.<course id>`.
    pub field: String,
    /// The value in Redis (`absent` when missing), as text, shortened.
    pub redis: String,
    /// The value the tables give (`absent` when none), as text, shortened.
    pub postgres: String,
}

const ABSENT: &str = "absent";

/// Records `field` if its two values differ, each shortened to an
/// [`excerpt`] (a report holds no page of HTML).
fn differ(
    out: &mut Vec<Difference>,
    field: String,
    redis: Option<String>,
    postgres: Option<String>,
) {
    if redis != postgres {
        let redis = redis.unwrap_or_else(|| ABSENT.to_owned());
        let postgres = postgres.unwrap_or_else(|| ABSENT.to_owned());
        out.push(Difference {
            field,
            redis: excerpt(&redis, &postgres),
            postgres: excerpt(&postgres, &redis),
        });
    }
}

/// A course: its aggregate, HTML, company tallies, three views and its
/// places in its category's rankings.
pub(super) fn course(
    id: i64,
    want: &expected::Course,
    got: &observed::Course,
    terms: &HashMap<i64, EventTerms>,
) -> Vec<Difference> {
    let mut out = Vec::new();
    let stamp = aggregate_fields(&mut out, &want.agg, &got.stamped.agg);
    differ(
        &mut out,
        format!("text.{}", aggregate::DESCRIPTION_HTML),
        got.html.clone(),
        Some(want.html.clone()),
    );
    let companies: BTreeSet<&String> = want.tallies.keys().chain(got.companies.keys()).collect();
    for company in companies {
        differ_score(
            &mut out,
            format!("companies.{company}"),
            got.companies.get(company).copied(),
            want.tallies.get(company).copied(),
        );
    }
    match want.render(id, &stamp, terms) {
        Some(views) => {
            view(&mut out, "view", got.page.as_deref(), &views.page);
            view(&mut out, "stats", got.stats.as_deref(), &views.stats);
            view(&mut out, "card", got.card.as_deref(), &views.card);
        }
        None => out.push(Difference {
            field: "view".into(),
            redis: "-".into(),
            postgres: "the course row does not render (a field is malformed)".into(),
        }),
    }
    differ_score(
        &mut out,
        "ranking.popular".into(),
        got.popular,
        Some(-want.students()),
    );
    differ_score(
        &mut out,
        "ranking.newest".into(),
        got.newest,
        want.created_us(),
    );
    out
}

/// An event: its aggregate, view and place in the pre-warming index.
pub(super) fn event(id: i64, want: &expected::Record, got: &observed::Record) -> Vec<Difference> {
    let mut out = record(want, got, |stamp| want.render_event(id, stamp));
    differ_score(&mut out, "index.by-end".into(), got.by_end, want.ends_us());
    out
}

/// An order: its aggregate and view.
pub(super) fn order(id: i64, want: &expected::Record, got: &observed::Record) -> Vec<Difference> {
    record(want, got, |stamp| want.render_order(id, stamp))
}

/// An event's or an order's aggregate, and its view as `render` renders it
/// at the stamp Redis holds.
fn record(
    want: &expected::Record,
    got: &observed::Record,
    render: impl FnOnce(&str) -> Option<Vec<u8>>,
) -> Vec<Difference> {
    let mut out = Vec::new();
    let stamp = aggregate_fields(&mut out, &want.agg, &got.stamped.agg);
    if let Some(json) = render(&stamp) {
        view(&mut out, "view", got.view.as_deref(), &json);
    }
    out
}

/// A user's library: each course and its enrollment time.
pub(super) fn library(want: &BTreeMap<i64, i64>, got: &BTreeMap<String, f64>) -> Vec<Difference> {
    let mut out = Vec::new();
    let want: BTreeMap<String, i64> = want
        .iter()
        .map(|(c, at)| (ranking_member(*c), *at))
        .collect();
    let members: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    for member in members {
        differ_score(
            &mut out,
            format!("library.{}", member_id(member)),
            got.get(member).copied(),
            want.get(member).copied(),
        );
    }
    out
}

/// A category: which courses its two rankings list.
pub(super) fn category(want: &BTreeSet<i64>, got: &observed::Category) -> Vec<Difference> {
    let mut out = Vec::new();
    let want: BTreeSet<String> = want.iter().map(|id| ranking_member(*id)).collect();
    for (ranking, members) in [("popular", &got.popular), ("newest", &got.newest)] {
        let listed: BTreeSet<&String> = members.iter().collect();
        for member in want.iter().filter(|m| !listed.contains(m)) {
            differ(
                &mut out,
                format!("{ranking}.{}", member_id(member)),
                None,
                Some("listed".into()),
            );
        }
        for member in listed.into_iter().filter(|m| !want.contains(*m)) {
            differ(
                &mut out,
                format!("{ranking}.{}", member_id(member)),
                Some("listed".into()),
                None,
            );
        }
    }
    out
}

/// A score in Redis against the integer the tables give.
fn differ_score(
    out: &mut Vec<Difference>,
    field: String,
    redis: Option<f64>,
    postgres: Option<i64>,
) {
    differ(
        out,
        field,
        redis.map(number),
        postgres.map(|n| n.to_string()),
    );
}

/// The aggregate's fields, stamps left out and absent counters read as
/// zero; returns the stamp Redis holds, which views are rendered at.
fn aggregate_fields(
    out: &mut Vec<Difference>,
    want: &BTreeMap<String, String>,
    got: &BTreeMap<String, String>,
) -> String {
    let stamp = got.get(aggregate::STAMP).cloned().unwrap_or_default();
    let got = without_zero_counters(
        got.iter()
            .filter(|(k, _)| *k != aggregate::STAMP && *k != aggregate::VIEW_STAMP)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    let fields: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    for field in fields {
        let (redis, postgres) = (got.get(field).cloned(), want.get(field).cloned());
        if is_counter(field) {
            let zero = || Some("0".to_owned());
            differ(
                out,
                format!("agg.{field}"),
                redis.or_else(zero),
                postgres.or_else(zero),
            );
        } else {
            differ(out, format!("agg.{field}"), redis, postgres);
        }
    }
    stamp
}

/// A stored view against the JSON the projector renders from the tables,
/// field by field (`lsn` left out).
fn view(out: &mut Vec<Difference>, name: &str, stored: Option<&[u8]>, rendered: &[u8]) {
    let want: Option<serde_json::Map<String, Json>> = serde_json::from_slice(rendered).ok();
    let Some(stored) = stored else {
        out.push(Difference {
            field: name.into(),
            redis: ABSENT.into(),
            postgres: "present".into(),
        });
        return;
    };
    let got = views::decode(stored)
        .map_err(|e| e.to_string())
        .and_then(|json| {
            serde_json::from_slice::<serde_json::Map<String, Json>>(&json)
                .map_err(|e| e.to_string())
        });
    let (got, want) = match (got, want) {
        (Ok(got), Some(want)) => (got, want),
        (Err(err), _) => {
            out.push(Difference {
                field: name.into(),
                redis: format!("unreadable: {err}"),
                postgres: "present".into(),
            });
            return;
        }
        (Ok(_), None) => return,
    };
    let fields: BTreeSet<&String> = want
        .keys()
        .chain(got.keys())
        .filter(|k| *k != "lsn")
        .collect();
    for field in fields {
        differ(
            out,
            format!("{name}.{field}"),
            got.get(field).map(Json::to_string),
            want.get(field).map(Json::to_string),
        );
    }
}

/// A score as the integer it holds.
fn number(score: f64) -> String {
    if score.fract() == 0.0 && score.abs() < 9.0e15 {
        (score as i64).to_string()
    } else {
        score.to_string()
    }
}

/// A ranking member (a zero-padded id) as the id.
fn member_id(member: &str) -> String {
    match member.parse::<i64>() {
        Ok(id) => id.to_string(),
        Err(_) => member.to_owned(),
    }
}

/// A value shortened for a report line: whole when short, else a window
/// around where it first differs from `other`, with its length.
fn excerpt(value: &str, other: &str) -> String {
    const SHORT: usize = 80;
    const BEFORE: usize = 20;
    const AFTER: usize = 50;
    if value.chars().count() <= SHORT {
        return value.to_owned();
    }
    let at = value
        .chars()
        .zip(other.chars())
        .take_while(|(a, b)| a == b)
        .count();
    let from = at.saturating_sub(BEFORE);
    let window: String = value.chars().skip(from).take(BEFORE + AFTER).collect();
    let total = value.chars().count();
    format!(
        "{}{window}{} ({} chars)",
        if from > 0 { "…" } else { "" },
        if from + BEFORE + AFTER < total {
            "…"
        } else {
            ""
        },
        total
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each difference as (field, redis, postgres).
    fn rows(out: &[Difference]) -> Vec<(&str, &str, &str)> {
        out.iter()
            .map(|d| (d.field.as_str(), d.redis.as_str(), d.postgres.as_str()))
            .collect()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn stamps_are_not_compared_and_a_counter_at_zero_is_an_absent_one() {
        let mut out = Vec::new();
        aggregate_fields(
            &mut out,
            &map(&[("title", "Rust"), ("n", "2")]),
            &map(&[
                ("title", "Rust"),
                ("n", "2"),
                ("cl:4", "0"),
                ("stamp", "X"),
                ("vstamp", "Y"),
            ]),
        );
        assert!(out.is_empty(), "{out:?}");
        aggregate_fields(
            &mut out,
            &map(&[("title", "Rust"), ("n", "2")]),
            &map(&[("title", "Go"), ("extra", "1")]),
        );
        assert_eq!(
            rows(&out),
            [
                ("agg.extra", "1", "absent"),
                ("agg.n", "0", "2"),
                ("agg.title", "Go", "Rust"),
            ]
        );
    }

    #[test]
    fn a_view_differs_by_its_fields_never_by_its_lsn() {
        let rendered = br#"{"id":1,"title":"Rust","lsn":"0/10"}"#;
        let mut out = Vec::new();
        view(
            &mut out,
            "view",
            Some(&views::encode(br#"{"id":1,"title":"Rust","lsn":"0/99"}"#)),
            rendered,
        );
        assert!(out.is_empty(), "{out:?}");
        view(
            &mut out,
            "view",
            Some(&views::encode(br#"{"id":1,"title":"Go","lsn":"0/10"}"#)),
            rendered,
        );
        view(&mut out, "card", None, rendered);
        view(&mut out, "stats", Some(&[7, 1, 2]), rendered);
        let fields: Vec<_> = out.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["view.title", "card", "stats"]);
        assert_eq!(
            (out[0].redis.as_str(), out[0].postgres.as_str()),
            ("\"Go\"", "\"Rust\"")
        );
        assert!(out[2].redis.starts_with("unreadable"), "{:?}", out[2]);
    }

    #[test]
    fn a_library_and_a_category_differ_by_member() {
        let got: BTreeMap<String, f64> = [(ranking_member(3), 30.0), (ranking_member(4), 40.0)]
            .into_iter()
            .collect();
        let out = library(&BTreeMap::from([(3, 30), (5, 50)]), &got);
        assert_eq!(
            rows(&out),
            [("library.4", "40", "absent"), ("library.5", "absent", "50")]
        );
        let got = observed::Category {
            popular: vec![ranking_member(1), ranking_member(9)],
            newest: vec![ranking_member(1), ranking_member(2)],
        };
        let out = category(&BTreeSet::from([1, 2]), &got);
        let fields: Vec<_> = out.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["popular.2", "popular.9"]);
    }

    #[test]
    fn a_long_value_is_shown_around_where_it_differs() {
        let html = format!("<p>{}</p>", "a".repeat(500));
        let mut changed = html.clone();
        changed.replace_range(300..301, "Z");
        let shown = excerpt(&changed, &html);
        assert!(shown.contains('Z') && shown.starts_with('…'), "{shown}");
        assert!(shown.ends_with("(507 chars)"), "{shown}");
        assert_eq!(excerpt("short", "other"), "short");
    }
}
