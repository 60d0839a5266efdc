//! The scenario's orders: each request numbered, so that every order in
//! the database names the request that wrote it.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use anyhow::{ensure, Context, Result};
use sqlx::PgConnection;

use super::super::{mix, Ctx};
use crate::load::{self, MakeRequest};
/// The requests of the scenario, each numbered: request `g` is an order by
/// user `first_user + g % users` of a course no other request gives that
/// user, so none is refused as already enrolled, and every order in the
/// database names the request that wrote it.
pub(super) struct Orders {
    first_user: i64,
    users: u64,
    courses: u64,
    /// The next number not taken.
    next: Arc<AtomicU64>,
}

impl Orders {
    /// Orders of `users` users over `courses` courses, none placed yet.
    #[cfg(test)]
    pub(super) fn for_tests(users: u64, courses: u64) -> Orders {
        Orders {
            first_user: 1_001,
            users,
            courses,
            next: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A block of fresh users of the seeded ones, a twentieth of them: each
    /// places an order of a different course every few seconds at most.
    pub(super) fn reserve(ctx: &Ctx) -> Result<Self> {
        let users = (ctx.scale.users / 20).max(1);
        let first_user = ctx.next_user.fetch_add(users, Ordering::Relaxed);
        ensure!(
            first_user + users - 1 <= ctx.scale.users,
            "the overload scenario needs {users} fresh users, and the earlier scenarios left fewer"
        );
        Ok(Orders {
            first_user,
            users: users as u64,
            courses: (ctx.scale.courses as u64).max(1),
            next: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The user and course of request `g`.
    fn order(&self, g: u64) -> (i64, i64) {
        let (u, k) = (g % self.users, g / self.users);
        let course = 1 + (k + mix(u) % self.courses) % self.courses;
        (self.first_user + u as i64, course as i64)
    }

    /// The request that placed an order of `course` by `user`.
    fn request(&self, user: i64, course: i64) -> Option<u64> {
        let u = u64::try_from(user - self.first_user).ok()?;
        let c = u64::try_from(course - 1).ok()?;
        (u < self.users && c < self.courses).then(|| {
            let k = (c + self.courses - mix(u) % self.courses) % self.courses;
            k * self.users + u
        })
    }

    /// Every number below this is unique to its request (see `order`).
    pub(super) fn ensure_unique(&self) -> Result<()> {
        let used = self.next.load(Ordering::Relaxed);
        ensure!(
            used <= self.users * self.courses,
            "the overload scenario sent {used} orders, more than its users can place without repeating a course"
        );
        Ok(())
    }

    fn make(orders: &Arc<Self>, g: u64) -> hyper::Request<load::Body> {
        let (user, course) = orders.order(g);
        let body = format!(r#"{{"user_id":{user},"course_ids":[{course}]}}"#);
        load::post_json(
            "/v1/orders",
            body.into_bytes(),
            &[("idempotency-key", format!("bench-overload-{g}"))],
        )
    }

    /// Requests that take the next number each.
    pub(super) fn counted(self: &Arc<Self>) -> MakeRequest {
        let orders = self.clone();
        Arc::new(move |_| {
            let g = orders.next.fetch_add(1, Ordering::Relaxed);
            Self::make(&orders, g)
        })
    }

    /// Requests numbered from the returned first number on (request `n` of
    /// the phase is `first + n`), `count` of them reserved.
    pub(super) fn numbered(self: &Arc<Self>, count: u64) -> (u64, MakeRequest) {
        let first = self.next.fetch_add(count, Ordering::Relaxed);
        let orders = self.clone();
        (
            first,
            Arc::new(move |n| {
                // Past the reservation (never, on a fixed schedule), a
                // number of its own, so no two requests share one.
                let g = if n < count {
                    first + n
                } else {
                    orders.next.fetch_add(1, Ordering::Relaxed)
                };
                Self::make(&orders, g)
            }),
        )
    }

    /// The numbers of the requests whose order is in the database.
    pub(super) async fn written(&self, db: &mut PgConnection) -> Result<HashSet<u64>> {
        let last = self.first_user + self.users as i64 - 1;
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT o.user_id, i.course_id FROM orders o JOIN order_items i ON i.order_id = o.id \
             WHERE o.user_id BETWEEN $1 AND $2",
        )
        .bind(self.first_user)
        .bind(last)
        .fetch_all(&mut *db)
        .await
        .context("reading the overload's orders back")?;
        let mut out = HashSet::with_capacity(rows.len());
        for (user, course) in rows {
            let g = self.request(user, course).with_context(|| {
                format!("an order of course {course} by user {user} that no request placed")
            })?;
            ensure!(out.insert(g), "request {g} placed two orders");
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_is_its_own_user_and_course_and_is_found_again() {
        let o = Orders::for_tests(7, 5);
        let mut pairs = HashSet::new();
        for g in 0..35 {
            let (user, course) = o.order(g);
            assert!((1_001..1_008).contains(&user), "{user}");
            assert!((1..=5).contains(&course), "{course}");
            assert!(pairs.insert((user, course)), "request {g} repeats a pair");
            assert_eq!(o.request(user, course), Some(g));
        }
        assert_eq!(o.request(1_000, 1), None);
        assert_eq!(o.request(1_008, 1), None);
        assert_eq!(o.request(1_001, 6), None);
    }
}
