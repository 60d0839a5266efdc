//! The courses' aggregates as Redis holds them, kept in process so a flush
//! of enrollments renders and writes a course in one round trip.

use std::collections::HashMap;

use views::{aggregate, TopCompany};

use super::{batch::Entry, render::pick_top};

/// A course's hash fields (without the HTML) and company tallies as Redis
/// holds them at their stamp. The one-script flush checks that Redis is still
/// at this stamp; otherwise the flush reads the aggregate back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownCourse {
    pub agg: HashMap<String, String>,
    pub tallies: HashMap<String, i64>,
}

impl KnownCourse {
    /// From an aggregate and all its tallies as the apply script returned
    /// them (the HTML, if returned, is not kept).
    pub fn new(mut agg: HashMap<String, String>, tallies: &[(String, i64)]) -> Self {
        agg.remove(aggregate::DESCRIPTION_HTML);
        KnownCourse {
            agg,
            tallies: tallies.iter().filter(|(_, n)| *n > 0).cloned().collect(),
        }
    }

    /// The stamp Redis must hold for this state to be its own.
    pub fn stamp(&self) -> &str {
        self.agg
            .get(aggregate::STAMP)
            .map(String::as_str)
            .unwrap_or("")
    }

    /// Moves this state past `entries`, as the apply script would; `false`
    /// if one of them is not newer than the state (a replay: Redis decides),
    /// and the state is then partly moved and must be dropped. In place, so
    /// an enrollment does not copy a hot course's thousand company tallies.
    pub fn advance(&mut self, entries: &[Entry]) -> bool {
        for entry in entries {
            let stamp = match entry {
                Entry::Fields { stamp, .. } | Entry::Enroll { stamp, .. } => stamp,
            };
            if stamp.as_str() <= self.stamp() {
                return false;
            }
            match entry {
                Entry::Fields { fields, .. } => {
                    for (k, v) in fields {
                        if k == aggregate::DESCRIPTION_HTML {
                            return false;
                        }
                        self.agg.insert(k.clone(), v.clone());
                    }
                }
                Entry::Enroll {
                    delta,
                    company,
                    event_id,
                    ..
                } => {
                    if add(&mut self.agg, aggregate::STUDENTS, *delta).is_none() {
                        return false;
                    }
                    if let Some(event) = event_id {
                        if add(&mut self.agg, &aggregate::claimed(*event), *delta).is_none() {
                            return false;
                        }
                    }
                    if let Some(company) = company {
                        match self.tallies.get_mut(company) {
                            Some(n) => {
                                *n += delta;
                                if *n <= 0 {
                                    self.tallies.remove(company);
                                }
                            }
                            None if *delta > 0 => {
                                self.tallies.insert(company.clone(), *delta);
                            }
                            None => {}
                        }
                    }
                }
            }
            match self.agg.get_mut(aggregate::STAMP) {
                Some(last) => last.clone_from(stamp),
                None => {
                    self.agg.insert(aggregate::STAMP.to_owned(), stamp.clone());
                }
            }
        }
        true
    }

    /// The state after `entries` (see [`KnownCourse::advance`]), leaving this
    /// one as it is.
    #[cfg(test)]
    pub fn advanced(&self, entries: &[Entry]) -> Option<KnownCourse> {
        let mut next = self.clone();
        next.advance(entries).then_some(next)
    }

    /// The five companies with the most students (SPEC's order).
    /// Picked without copying the other tallies: a hot course has one per
    /// company of its students, and this runs at every flush that enrolls.
    pub fn top_companies(&self) -> Vec<TopCompany> {
        pick_top(self.tallies.iter().map(|(c, n)| (c.as_str(), *n)))
    }
}

/// Adds `delta` to an integer hash field, as `HINCRBY` does.
fn add(agg: &mut HashMap<String, String>, field: &str, delta: i64) -> Option<()> {
    match agg.get_mut(field) {
        Some(v) => {
            let now: i64 = v.parse().ok()?;
            *v = (now + delta).to_string();
        }
        None => {
            agg.insert(field.to_owned(), delta.to_string());
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::{stamp, top_five};
    use views::Lsn;

    #[test]
    fn a_known_course_picks_its_top_five_as_top_five_sorts_them() {
        let tallies: Vec<(String, i64)> = (0..40)
            .map(|i| (format!("company {:02}", (i * 17) % 40), (i * 7) % 6))
            .collect();
        let known = KnownCourse::new(HashMap::new(), &tallies);
        assert_eq!(known.top_companies(), top_five(&tallies));
        assert_eq!(known.top_companies().len(), 5);
        assert!(KnownCourse::new(HashMap::new(), &[])
            .top_companies()
            .is_empty());
    }

    #[test]
    fn a_known_course_advances_as_the_apply_script_would_and_refuses_replays() {
        let agg: HashMap<String, String> = [("n", "2"), ("stamp", "0000000000000010AAAAAAAA")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let known = KnownCourse::new(agg, &[("acme".to_owned(), 2), ("gone".to_owned(), 0)]);
        assert_eq!(known.tallies.len(), 1, "empty tallies are dropped");
        let enroll = |at: u64, delta: i64, company: Option<&str>| Entry::Enroll {
            stamp: stamp(Lsn(at), 0),
            delta,
            company: company.map(str::to_owned),
            event_id: Some(4),
        };
        let next = known
            .advanced(&[
                enroll(0x20, 1, Some("globex")),
                enroll(0x21, -1, Some("acme")),
            ])
            .expect("newer entries apply");
        assert_eq!(next.agg["n"], "2");
        assert_eq!(next.agg["cl:4"], "0");
        assert_eq!(next.stamp(), stamp(Lsn(0x21), 0));
        let names: Vec<_> = next
            .top_companies()
            .into_iter()
            .map(|t| t.company)
            .collect();
        assert_eq!(names, ["acme", "globex"]);
        let gone = next
            .advanced(&[enroll(0x22, -1, Some("acme"))])
            .expect("applies");
        assert!(
            !gone.tallies.contains_key("acme"),
            "a tally at zero is removed"
        );
        assert!(
            next.advanced(&[enroll(0x10, 1, None)]).is_none(),
            "an entry not newer than the state is a replay"
        );
    }
}
