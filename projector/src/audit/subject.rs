//! What the audit compares: an entity of one kind, named as the report
//! names it.

use std::fmt;

/// The kinds of things the audit compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Course,
    Event,
    Order,
    Library,
    Category,
}

impl Kind {
    pub(super) const ALL: [Kind; 5] = [
        Kind::Course,
        Kind::Event,
        Kind::Order,
        Kind::Library,
        Kind::Category,
    ];

    /// Its name in reports, plural.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Course => "courses",
            Kind::Event => "events",
            Kind::Order => "orders",
            Kind::Library => "libraries",
            Kind::Category => "categories",
        }
    }
}

/// One thing the audit compares.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    /// A course: aggregate, HTML, tallies, page, stats, card, rankings.
    Course(i64),
    /// An event: aggregate, view, pre-warming index.
    Event(i64),
    /// An order: aggregate and view.
    Order(i64),
    /// A user's library.
    Library(i64),
    /// A category's rankings: which courses they list.
    Category(String),
}

impl Subject {
    /// The names of the categories among `subjects`.
    pub(super) fn category_names(subjects: &[Subject]) -> Vec<String> {
        subjects
            .iter()
            .filter_map(|s| match s {
                Subject::Category(name) => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    pub(super) fn kind(&self) -> Kind {
        match self {
            Subject::Course(_) => Kind::Course,
            Subject::Event(_) => Kind::Event,
            Subject::Order(_) => Kind::Order,
            Subject::Library(_) => Kind::Library,
            Subject::Category(_) => Kind::Category,
        }
    }

    pub(super) fn id(&self) -> Option<i64> {
        match self {
            Subject::Course(id)
            | Subject::Event(id)
            | Subject::Order(id)
            | Subject::Library(id) => Some(*id),
            Subject::Category(_) => None,
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Course(id) => write!(f, "course {id}"),
            Subject::Event(id) => write!(f, "event {id}"),
            Subject::Order(id) => write!(f, "order {id}"),
            Subject::Library(id) => write!(f, "library {id}"),
            Subject::Category(name) => write!(f, "category {name:?}"),
        }
    }
}
