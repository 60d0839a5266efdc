//! Exactness, the projector's promise: a stream of orders and cancels to
//! project, and checks that every view equals what the tables say.

use std::time::Duration;

use anyhow::Result;
use reqwest::StatusCode;
use serde_json::json;

use crate::Stack;

/// Writes orders (and cancels every third) from `tasks` concurrent writers,
/// one order per user of `users`, as fast as the command API takes them;
/// each task returns the LSN of its last commit.
pub fn writers(
    stack: &Stack,
    courses: &[i64],
    users: &[i64],
    tasks: usize,
    tag: &'static str,
) -> Vec<tokio::task::JoinHandle<Result<String>>> {
    paced_writers(stack, courses, users, tasks, tag, Duration::ZERO)
}

/// As [`writers`], each task pausing `pace` after each order, so that the
/// stream lasts while something else happens.
pub fn paced_writers(
    stack: &Stack,
    courses: &[i64],
    users: &[i64],
    tasks: usize,
    tag: &'static str,
    pace: Duration,
) -> Vec<tokio::task::JoinHandle<Result<String>>> {
    (0..tasks)
        .map(|t| {
            let mine: Vec<i64> = users.iter().copied().skip(t).step_by(tasks).collect();
            paced_writer(stack, courses, &mine, tag, pace)
        })
        .collect()
}

/// One writer of [`paced_writers`]: an order per user of `users` in turn
/// (every third cancelled), pausing `pace` after each; returns the LSN of
/// its last commit.
pub fn paced_writer(
    stack: &Stack,
    courses: &[i64],
    users: &[i64],
    tag: &'static str,
    pace: Duration,
) -> tokio::task::JoinHandle<Result<String>> {
    let (users, courses) = (users.to_vec(), courses.to_vec());
    let command = stack.command.clone();
    let http = stack.http.clone();
    tokio::spawn(async move {
        let mut last = String::new();
        for (n, user) in users.into_iter().enumerate() {
            let pick: Vec<i64> = courses
                .iter()
                .copied()
                .filter(|c| (c + user + n as i64) % 3 != 0)
                .collect();
            let pick = if pick.is_empty() {
                vec![courses[0]]
            } else {
                pick
            };
            let r = http
                .post(format!("{command}/v1/orders"))
                .header("Idempotency-Key", format!("{tag}-{user}"))
                .json(&json!({"user_id": user, "course_ids": pick}))
                .send()
                .await?;
            anyhow::ensure!(r.status() == StatusCode::CREATED, "order: {}", r.status());
            last = r.headers()["x-commit-lsn"].to_str()?.to_owned();
            let id = r.json::<serde_json::Value>().await?["id"]
                .as_i64()
                .unwrap_or(0);
            if user % 3 == 0 {
                let c = http
                    .post(format!("{command}/v1/orders/{id}/cancel"))
                    .send()
                    .await?;
                anyhow::ensure!(c.status() == StatusCode::OK, "cancel: {}", c.status());
                last = c.headers()["x-commit-lsn"].to_str()?.to_owned();
            }
            if !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
        }
        anyhow::Ok(last)
    })
}

/// Every course page equals the tables (student count and top companies),
/// and so does each category's popular ranking.
pub async fn assert_views_equal_tables(stack: &Stack) -> Result<()> {
    let lsn = stack.current_lsn().await?;
    let rows = stack
        .pg
        .query(
            "SELECT c.id, (SELECT count(*) FROM enrollments e WHERE e.course_id = c.id AND e.revoked_at IS NULL), \
                    coalesce((SELECT json_agg(json_build_object('company', company, 'students', n) ORDER BY n DESC, company) \
                      FROM (SELECT company, count(*) AS n FROM enrollments e \
                             WHERE e.course_id = c.id AND e.revoked_at IS NULL AND company IS NOT NULL \
                             GROUP BY company ORDER BY n DESC, company LIMIT 5) t)::text, '[]') \
               FROM courses c ORDER BY c.id",
            &[],
        )
        .await?;
    for row in rows {
        let (id, count, top): (i64, i64, String) = (row.get(0), row.get(1), row.get(2));
        let page = stack.get_fresh(&format!("/v1/courses/{id}"), &lsn).await?;
        assert_eq!(
            page.status,
            StatusCode::OK,
            "course {id}: {}",
            String::from_utf8_lossy(&page.raw)
        );
        assert_eq!(page.body["student_count"], count, "course {id}");
        let top: serde_json::Value = serde_json::from_str(&top)?;
        assert_eq!(page.body["top_companies"], top, "course {id}");
    }
    // Each category's popular ranking is the tables' order: students
    // descending, then id.
    let rows = stack
        .pg
        .query(
            "SELECT c.category, array_agg(c.id ORDER BY n DESC, c.id) \
               FROM (SELECT c.id, c.category, \
                            (SELECT count(*) FROM enrollments e \
                              WHERE e.course_id = c.id AND e.revoked_at IS NULL) AS n \
                       FROM courses c) c \
              GROUP BY c.category",
            &[],
        )
        .await?;
    for row in rows {
        let (category, ids): (String, Vec<i64>) = (row.get(0), row.get(1));
        let page = stack
            .get_fresh(
                &format!("/v1/categories/{category}/courses?sort=popular&limit=100"),
                &lsn,
            )
            .await?;
        assert_eq!(page.status, StatusCode::OK, "category {category}");
        let listed: Vec<i64> = page.body["courses"]
            .as_array()
            .map(|cards| cards.iter().filter_map(|c| c["id"].as_i64()).collect())
            .unwrap_or_default();
        assert_eq!(listed, ids, "popular ranking of {category}");
    }
    Ok(())
}

/// Every order equals the tables (status, total, items), and so do the
/// libraries of the `libraries` latest buyers.
pub async fn assert_orders_equal_tables(stack: &Stack, libraries: usize) -> Result<()> {
    let lsn = stack.current_lsn().await?;
    let rows = stack
        .pg
        .query(
            "SELECT o.id, o.status, o.user_id, o.total_krw, count(i.course_id) \
               FROM orders o JOIN order_items i ON i.order_id = o.id \
              GROUP BY o.id ORDER BY o.id DESC",
            &[],
        )
        .await?;
    assert!(!rows.is_empty(), "the load wrote no orders");
    for (n, row) in rows.iter().enumerate() {
        let (id, status, user): (i64, String, i64) = (row.get(0), row.get(1), row.get(2));
        let (total, items): (i64, i64) = (row.get(3), row.get(4));
        let order = stack.get_fresh(&format!("/v1/orders/{id}"), &lsn).await?;
        assert_eq!(order.status, StatusCode::OK, "order {id}");
        assert_eq!(order.body["status"], status.as_str(), "order {id}");
        assert_eq!(order.body["total_krw"], total, "order {id}");
        assert_eq!(
            order.body["items"].as_array().map(Vec::len),
            Some(items as usize),
            "order {id}"
        );
        if n >= libraries {
            continue;
        }
        let library = stack
            .get_fresh(&format!("/v1/users/{user}/courses"), &lsn)
            .await?;
        assert_eq!(library.status, StatusCode::OK, "library of user {user}");
        let active: i64 = stack
            .pg
            .query_one(
                "SELECT count(*) FROM enrollments WHERE user_id = $1 AND revoked_at IS NULL",
                &[&user],
            )
            .await?
            .get(0);
        assert_eq!(library.body["total"], active, "library of user {user}");
    }
    Ok(())
}

/// Every course page, ranking and order equals the tables, and so do the
/// libraries of the 20 latest buyers.
pub async fn assert_views_and_orders_equal_tables(stack: &Stack) -> Result<()> {
    assert_views_equal_tables(stack).await?;
    assert_orders_equal_tables(stack, 20).await
}
