//! The storefront's reads, end to end: write through the command API, let the
//! real projector build the views, read cards, category rankings, libraries,
//! orders and event pages through the query API.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use e2e::{cards_path, Answer, Stack};
use reqwest::StatusCode;
use serde_json::{json, Value as Json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};

/// Asserts a 200 and returns the answer.
fn ok(a: Answer, what: &str) -> Answer {
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{what}: {}",
        String::from_utf8_lossy(&a.raw)
    );
    assert!(
        a.header("x-projection-lsn").contains('/'),
        "{what}: X-Projection-Lsn {:?}",
        a.header("x-projection-lsn")
    );
    a
}

/// The ids of the cards of a list answer, in order.
fn card_ids(a: &Answer) -> Vec<i64> {
    a.body["courses"]
        .as_array()
        .map(|cards| cards.iter().filter_map(|c| c["id"].as_i64()).collect())
        .unwrap_or_default()
}

/// Creates a course in `category`; returns its id.
async fn course_in(
    stack: &Stack,
    title: &str,
    category: &str,
    price_krw: i64,
) -> anyhow::Result<i64> {
    let a = stack
        .post(
            "/v1/courses",
            &json!({
                "title": title, "summary": format!("about {title}"), "description_html": "<p>x</p>",
                "category": category, "instructor": "Lee", "price_krw": price_krw,
            }),
        )
        .await?;
    a.created_id()
}

/// Places an order; returns the answer (201 asserted).
async fn buy(stack: &Stack, key: &str, body: Json) -> anyhow::Result<Answer> {
    let a = stack.order(key, &body).await?;
    assert_eq!(
        a.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&a.raw)
    );
    Ok(a)
}

/// A time `seconds` from now in RFC 3339.
fn rfc3339_from_now(seconds: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(seconds)).to_rfc3339()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cards_come_in_the_order_asked_with_duplicates_repeated_and_missing_ids_listed_once(
) -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let a = stack
        .course("Alpha", "<p>a long description</p>", 1000)
        .await?;
    let b = stack.course("Beta", "<p>b</p>", 2000).await?;
    let c = stack.course("Gamma", "<p>c</p>", 0).await?;
    let lsn = stack.current_lsn().await?;
    stack.start_projector().await?;
    let (gone, never) = (c + 1000, c + 2000);

    let path = format!("/v1/courses?ids={c},{a},{gone},{c},{never},{gone},{b}");
    let answer = ok(stack.get_fresh(&path, &lsn).await?, &path);

    assert_eq!(card_ids(&answer), [c, a, c, b]);
    assert_eq!(answer.body["missing"], json!([gone, never]));
    let alpha = &answer.body["courses"][1];
    assert_eq!(alpha["title"], "Alpha");
    assert_eq!(alpha["price_krw"], 1000);
    assert_eq!(alpha["student_count"], 0);
    assert_eq!(alpha["category"], "programming");
    assert!(alpha["sale"].is_null(), "no event: {alpha}");
    for absent in ["description_html", "top_companies", "sales"] {
        assert!(
            alpha.get(absent).is_none(),
            "a card has no {absent}: {alpha}"
        );
    }
    assert!(alpha["lsn"].as_str().is_some_and(|l| l.contains('/')));
    assert!(alpha["created_at"].is_string());

    // Only missing ids: an empty list, not a 404.
    let none = ok(
        stack
            .get_fresh(&format!("/v1/courses?ids={gone}"), &lsn)
            .await?,
        "none",
    );
    assert_eq!(none.body, json!({"courses": [], "missing": [gone]}));
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_and_twenty_five_cards_cost_one_round_trip_to_redis() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let mut ids = Vec::new();
    for i in 0..125 {
        ids.push(
            stack
                .course(&format!("Sale course {i}"), "<p>x</p>", 10_000)
                .await?,
        );
    }
    let lsn = stack.current_lsn().await?;
    stack.start_projector().await?;
    let path = cards_path(&ids);
    let fresh = ok(stack.get_fresh(&path, &lsn).await?, "fresh");
    assert_eq!(card_ids(&fresh), ids);

    // A second query API whose only way to Redis is a proxy that holds back
    // every reply by DELAY and counts the commands it forwards: a read's
    // time in units of DELAY is its number of sequential round trips.
    const DELAY: Duration = Duration::from_millis(400);
    let (proxy, query, _stop) = slow_query_api(&stack, DELAY, &path).await?;
    let get = |path: String| stack.send(stack.http.get(format!("{query}{path}")));

    let stats_before = command_calls(&stack).await?;
    let before = proxy.commands();
    let started = Instant::now();
    let cards = ok(get(path.clone()).await?, "125 cards");
    let took = started.elapsed();
    let sent = proxy.commands_since(&before);
    let stats_after = command_calls(&stack).await?;

    assert_eq!(card_ids(&cards), ids);
    // 125 card reads plus the generation marker and its watermark: on a
    // single Redis, one MGET of them all (read at one instant, so the marker
    // proves the generation was live for every key).
    one_mget_in_one_delay(&sent, took, DELAY);
    // Redis's own count is shared with every other test on this server, so
    // only its lower bound is provable here; the exact count is the proxy's.
    let grown = stats_after.get("mget").copied().unwrap_or(0)
        - stats_before.get("mget").copied().unwrap_or(0);
    assert!(grown >= 1, "cmdstat_mget grew by {grown}");

    // Read-your-writes with a token the projection has reached: the same
    // single MGET, whose watermark proves the token; nothing is polled.
    let before = proxy.commands();
    let started = Instant::now();
    let cards = ok(
        stack
            .send(
                stack
                    .http
                    .get(format!("{query}{path}"))
                    .header("X-Min-Lsn", &lsn),
            )
            .await?,
        "125 cards at a reached token",
    );
    let took = started.elapsed();
    let sent = proxy.commands_since(&before);
    assert_eq!(card_ids(&cards), ids);
    one_mget_in_one_delay(&sent, took, DELAY);

    // A ranking page of 100 takes two: the ids with the total, then the cards.
    let started = Instant::now();
    let page = ok(
        get("/v1/categories/programming/courses?sort=newest&limit=100".into()).await?,
        "ranking",
    );
    let took = started.elapsed();
    assert_eq!(page.body["total"], 125);
    assert_eq!(card_ids(&page).len(), 100);
    assert!(
        took >= 2 * DELAY && took < 3 * DELAY,
        "two round trips take two delays, took {took:?}"
    );
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_of_one_course_share_one_redis_read() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let (course, _, (proxy, query, _stop)) =
        one_course_behind_slow_redis(&mut stack, "<p>p</p>").await?;
    let url = format!("{query}/v1/courses/{course}");

    let before = proxy.commands();
    let readers: Vec<_> = (0..20)
        .map(|_| {
            let http = stack.http.clone();
            let url = url.clone();
            tokio::spawn(async move { http.get(url).send().await?.bytes().await })
        })
        .collect();
    let mut bodies = Vec::new();
    for reader in readers {
        bodies.push(reader.await??);
    }
    let sent = proxy.commands_since(&before);

    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every reader got the same page"
    );
    // One read is one MGET (marker, watermark, page, stats, marker); twenty
    // uncoalesced readers would send twenty.
    let commands: u64 = sent.values().sum();
    assert!(
        commands <= 2,
        "twenty concurrent misses sent {commands} commands: {sent:?}"
    );
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_category_lists_its_courses_by_popularity_or_novelty_a_page_at_a_time(
) -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let category = "Data & ML";
    let mut c = Vec::new();
    for i in 0..5 {
        c.push(course_in(&stack, &format!("Data {i}"), category, 1000).await?);
    }
    let elsewhere = course_in(&stack, "Other", "design", 1000).await?;
    // Students: c0 two, c1 none, c2 two, c3 one, c4 none.
    let buyers = [vec![c[0], c[2], c[3], elsewhere], vec![c[0], c[2]]];
    for (i, courses) in buyers.iter().enumerate() {
        let user = stack.user(&format!("fan{i}@example.com"), None).await?;
        buy(
            &stack,
            &format!("fan-{i}"),
            json!({"user_id": user, "course_ids": courses}),
        )
        .await?;
    }
    let lsn = stack.current_lsn().await?;
    stack.start_projector().await?;
    let base = "/v1/categories/Data%20%26%20ML/courses";

    // Popular: students descending, then id ascending.
    let popular = ok(stack.get_fresh(base, &lsn).await?, "popular");
    assert_eq!(card_ids(&popular), [c[0], c[2], c[3], c[1], c[4]]);
    assert_eq!(popular.body["total"], 5);
    assert_eq!(popular.body["courses"][0]["student_count"], 2);
    let explicit = ok(
        stack
            .get_fresh(&format!("{base}?sort=popular"), &lsn)
            .await?,
        "sort=popular",
    );
    assert_eq!(card_ids(&explicit), card_ids(&popular));

    // Newest: created_at descending, then id descending.
    let newest = ok(
        stack
            .get_fresh(&format!("{base}?sort=newest"), &lsn)
            .await?,
        "newest",
    );
    assert_eq!(card_ids(&newest), [c[4], c[3], c[2], c[1], c[0]]);

    // Pages, with the total of the whole list.
    let page = ok(
        stack
            .get_fresh(&format!("{base}?limit=2&offset=1"), &lsn)
            .await?,
        "popular page",
    );
    assert_eq!(card_ids(&page), [c[2], c[3]]);
    assert_eq!(page.body["total"], 5);
    let last = ok(
        stack
            .get_fresh(&format!("{base}?sort=newest&limit=2&offset=4"), &lsn)
            .await?,
        "last page",
    );
    assert_eq!(card_ids(&last), [c[0]]);
    let beyond = ok(
        stack.get_fresh(&format!("{base}?offset=50"), &lsn).await?,
        "beyond the end",
    );
    assert_eq!(beyond.body, json!({"courses": [], "total": 5}));

    // An unknown category is an empty list, not a 404.
    let unknown = ok(
        stack
            .get_fresh("/v1/categories/no-such-category/courses", &lsn)
            .await?,
        "unknown",
    );
    assert_eq!(unknown.body, json!({"courses": [], "total": 0}));

    // A course moved to another category leaves both of its old rankings
    // and joins the new ones.
    let moved = stack
        .send(
            stack
                .http
                .patch(format!("{}/v1/courses/{}", stack.command, c[3]))
                .json(&json!({"category": "design"})),
        )
        .await?;
    assert_eq!(moved.status, StatusCode::OK);
    let lsn = stack.current_lsn().await?;
    let popular = ok(stack.get_fresh(base, &lsn).await?, "popular after the move");
    assert_eq!(card_ids(&popular), [c[0], c[2], c[1], c[4]]);
    assert_eq!(popular.body["total"], 4);
    let newest = ok(
        stack
            .get_fresh(&format!("{base}?sort=newest"), &lsn)
            .await?,
        "newest after the move",
    );
    assert_eq!(card_ids(&newest), [c[4], c[2], c[1], c[0]]);
    let design = ok(
        stack
            .get_fresh("/v1/categories/design/courses", &lsn)
            .await?,
        "the new category",
    );
    assert_eq!(card_ids(&design), [c[3], elsewhere]);
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_library_lists_their_active_courses_newest_enrollment_first() -> anyhow::Result<()>
{
    let mut stack = Stack::start().await?;
    let a = stack.course("First bought", "<p>a</p>", 1000).await?;
    let b = stack.course("Second bought", "<p>b</p>", 1000).await?;
    let c = stack.course("Third bought", "<p>c</p>", 1000).await?;
    let reader = stack.user("reader@example.com", Some("Acme")).await?;
    let idle = stack.user("idle@example.com", None).await?;
    let mut orders = Vec::new();
    for (i, course) in [a, b, c].into_iter().enumerate() {
        let order = buy(
            &stack,
            &format!("lib-{i}"),
            json!({"user_id": reader, "course_ids": [course]}),
        )
        .await?;
        orders.push(order.body["id"].as_i64().expect("order id"));
    }
    let lsn = stack.current_lsn().await?;
    stack.start_projector().await?;

    let library = ok(
        stack
            .get_fresh(&format!("/v1/users/{reader}/courses"), &lsn)
            .await?,
        "library",
    );
    assert_eq!(card_ids(&library), [c, b, a]);
    assert_eq!(library.body["user_id"], reader);
    assert_eq!(library.body["total"], 3);
    assert!(library.body["courses"][0].get("description_html").is_none());

    let page = ok(
        stack
            .get_fresh(&format!("/v1/users/{reader}/courses?limit=2"), &lsn)
            .await?,
        "first page",
    );
    assert_eq!(card_ids(&page), [c, b]);
    assert_eq!(page.body["total"], 3);
    let rest = ok(
        stack
            .get_fresh(
                &format!("/v1/users/{reader}/courses?limit=2&offset=2"),
                &lsn,
            )
            .await?,
        "second page",
    );
    assert_eq!(card_ids(&rest), [a]);

    // No enrollment, or no such user: an empty list.
    for user in [idle, idle + 1000] {
        let empty = ok(
            stack
                .get_fresh(&format!("/v1/users/{user}/courses"), &lsn)
                .await?,
            "empty",
        );
        assert_eq!(
            empty.body,
            json!({"user_id": user, "courses": [], "total": 0})
        );
    }

    // A cancelled order leaves the library (active enrollments only).
    let cancel = stack
        .post(&format!("/v1/orders/{}/cancel", orders[1]), &json!({}))
        .await?;
    assert_eq!(
        cancel.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&cancel.raw)
    );
    let after = ok(
        stack
            .get_fresh(
                &format!("/v1/users/{reader}/courses"),
                cancel.header("x-commit-lsn"),
            )
            .await?,
        "after cancel",
    );
    assert_eq!(card_ids(&after), [c, a]);
    assert_eq!(after.body["total"], 2);
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_found_with_its_own_commit_lsn_and_revalidates_by_etag() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    stack.start_projector().await?;
    let course = stack.course("Checkout", "<p>x</p>", 12_000).await?;
    let other = stack.course("Checkout too", "<p>y</p>", 3_000).await?;

    // Streamed one by one, each read with the token of its own write.
    let mut last = None;
    for i in 0..5 {
        let user = stack.user(&format!("buyer{i}@example.com"), None).await?;
        let order = buy(
            &stack,
            &format!("o-{i}"),
            json!({"user_id": user, "course_ids": [course, other]}),
        )
        .await?;
        let id = order.body["id"].as_i64().expect("order id");
        let view = ok(
            stack
                .get_fresh(&format!("/v1/orders/{id}"), order.header("x-commit-lsn"))
                .await?,
            "order",
        );
        assert_eq!(view.body["id"], id);
        assert_eq!(view.body["user_id"], user);
        assert_eq!(view.body["status"], "completed");
        assert_eq!(view.body["total_krw"], 15_000);
        assert!(view.body["created_at"].is_string());
        let mut items = view.body["items"].as_array().cloned().unwrap_or_default();
        items.sort_by_key(|i| i["course_id"].as_i64());
        assert_eq!(
            items,
            [
                json!({"course_id": course, "price_krw": 12_000}),
                json!({"course_id": other, "price_krw": 3_000})
            ]
        );
        last = Some((id, view));
    }
    let (id, view) = last.expect("five orders");

    let etag = view.header("etag").to_owned();
    assert!(!etag.is_empty());
    let revalidated = stack
        .send(
            stack
                .http
                .get(format!("{}/v1/orders/{id}", stack.query))
                .header("If-None-Match", &etag),
        )
        .await?;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
    assert!(revalidated.raw.is_empty());
    assert!(!revalidated.header("x-projection-lsn").is_empty());

    // Cancelling changes the view, so the tag.
    let cancel = stack
        .post(&format!("/v1/orders/{id}/cancel"), &json!({}))
        .await?;
    assert_eq!(
        cancel.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&cancel.raw)
    );
    let cancelled = ok(
        stack
            .send(
                stack
                    .http
                    .get(format!("{}/v1/orders/{id}", stack.query))
                    .header("X-Min-Lsn", cancel.header("x-commit-lsn"))
                    .header("If-None-Match", &etag),
            )
            .await?,
        "cancelled",
    );
    assert_eq!(cancelled.body["status"], "cancelled");
    assert_ne!(cancelled.header("etag"), etag);

    let unknown = stack
        .get_fresh(
            &format!("/v1/orders/{}", id + 1000),
            cancel.header("x-commit-lsn"),
        )
        .await?;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.body["error"]["code"], "not_found");
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_page_shows_its_sale_price_and_seats_left_while_it_runs() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let limited = stack.course("Limited seats", "<p>l</p>", 10_001).await?;
    let open = stack.course("Open seats", "<p>o</p>", 20_000).await?;
    let outside = stack.course("Not on sale", "<p>n</p>", 5_000).await?;
    let (hour_ago, in_an_hour) = (rfc3339_from_now(-3600), rfc3339_from_now(3600));
    let event = stack
        .post(
            "/v1/events",
            &json!({
                "name": "Winter sale", "starts_at": hour_ago, "ends_at": in_an_hour,
                "discount_percent": 30,
                "courses": [{"course_id": limited, "seat_limit": 2}, {"course_id": open}],
            }),
        )
        .await?
        .created_id()?;
    let (tomorrow, later) = (rfc3339_from_now(86_400), rfc3339_from_now(2 * 86_400));
    let upcoming = stack
        .post(
            "/v1/events",
            &json!({
                "name": "Spring sale", "starts_at": tomorrow, "ends_at": later,
                "discount_percent": 90, "courses": [{"course_id": open}],
            }),
        )
        .await?
        .created_id()?;
    let user = stack.user("early@example.com", None).await?;
    let order = buy(
        &stack,
        "sale-1",
        json!({"user_id": user, "course_ids": [limited, outside], "event_id": event}),
    )
    .await?;
    assert_eq!(
        order.body["total_krw"],
        7_000 + 5_000,
        "10001 * 70 / 100 rounded down"
    );
    stack.start_projector().await?;
    let lsn = order.header("x-commit-lsn");

    let page = ok(
        stack.get_fresh(&format!("/v1/events/{event}"), lsn).await?,
        "event",
    );
    assert_eq!(page.body["id"], event);
    assert_eq!(page.body["name"], "Winter sale");
    assert_eq!(page.body["discount_percent"], 30);
    assert!(page.body["starts_at"].is_string() && page.body["ends_at"].is_string());
    assert_eq!(card_ids(&page), [limited, open]);
    let sale = &page.body["courses"][0]["sale"];
    assert_eq!(sale["event_id"], event);
    assert_eq!(sale["price_krw"], 7_000);
    assert_eq!(sale["discount_percent"], 30);
    assert_eq!(sale["seats_left"], 1);
    assert_eq!(
        page.body["courses"][0]["price_krw"], 10_001,
        "the list price stays"
    );
    let sale = &page.body["courses"][1]["sale"];
    assert_eq!(sale["price_krw"], 14_000);
    assert!(sale["seats_left"].is_null(), "no seat limit: {sale}");

    // An event that has not started: its cards carry no sale.
    let later_page = ok(
        stack
            .get_fresh(&format!("/v1/events/{upcoming}"), lsn)
            .await?,
        "upcoming",
    );
    assert_eq!(card_ids(&later_page), [open]);
    assert!(later_page.body["courses"][0]["sale"].is_null());

    // The course page and cards show the running sale, by the query API's clock.
    let detail = ok(
        stack.get_fresh(&format!("/v1/courses/{open}"), lsn).await?,
        "detail",
    );
    assert_eq!(detail.body["sale"]["event_id"], event);
    assert!(detail.body.get("sales").is_none());
    let cards = ok(
        stack
            .get_fresh(&format!("/v1/courses?ids={outside},{limited}"), lsn)
            .await?,
        "cards",
    );
    assert!(cards.body["courses"][0]["sale"].is_null());
    assert_eq!(cards.body["courses"][1]["sale"]["seats_left"], 1);

    // The event page revalidates by ETag until a seat is taken.
    let etag = page.header("etag").to_owned();
    assert!(!etag.is_empty());
    let same = stack
        .send(
            stack
                .http
                .get(format!("{}/v1/events/{event}", stack.query))
                .header("If-None-Match", &etag),
        )
        .await?;
    assert_eq!(same.status, StatusCode::NOT_MODIFIED);
    let second = stack.user("late@example.com", None).await?;
    let taken = buy(
        &stack,
        "sale-2",
        json!({"user_id": second, "course_ids": [limited], "event_id": event}),
    )
    .await?;
    let changed = ok(
        stack
            .send(
                stack
                    .http
                    .get(format!("{}/v1/events/{event}", stack.query))
                    .header("X-Min-Lsn", taken.header("x-commit-lsn"))
                    .header("If-None-Match", &etag),
            )
            .await?,
        "after the last seat",
    );
    assert_ne!(changed.header("etag"), etag);
    // Sold out: this event's page shows no sale for the course.
    let seats = &changed.body["courses"][0]["sale"];
    assert!(seats.is_null() || seats["seats_left"] == 0, "{seats}");

    let unknown = stack
        .get_fresh(&format!("/v1/events/{}", event + 1000), lsn)
        .await?;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_of_a_thousand_courses_streamed_in_one_transaction_lists_them_all(
) -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    stack.start_projector().await?;
    let mut courses = Vec::with_capacity(1000);
    for i in 0..1000 {
        courses.push(
            stack
                .course(&format!("Bulk {i}"), "<p>b</p>", 1000 + i)
                .await?,
        );
    }
    // One transaction: the event's 1,000 course rows reach one flush, whose
    // first step goes to Redis in several chunks (one entity per course, and
    // the event itself with 1,000 entries in one script).
    let created = stack
        .post(
            "/v1/events",
            &json!({
                "name": "Everything sale", "starts_at": rfc3339_from_now(-60),
                "ends_at": rfc3339_from_now(3600), "discount_percent": 50,
                "courses": courses.iter().map(|c| json!({"course_id": c})).collect::<Vec<_>>(),
            }),
        )
        .await?
        .ensure_status(StatusCode::CREATED)?;
    let event = created.body["id"].as_i64().expect("event id");
    let page = ok(
        stack
            .get_fresh(
                &format!("/v1/events/{event}"),
                created.header("x-commit-lsn"),
            )
            .await?,
        "event",
    );
    assert_eq!(card_ids(&page), courses);
    let cards = page.body["courses"].as_array().expect("cards");
    for (card, i) in cards.iter().zip(0..) {
        assert_eq!(card["sale"]["event_id"], event, "{card}");
        assert_eq!(card["sale"]["price_krw"], (1000 + i) / 2, "{card}");
    }
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_list_parameters_are_400_when_unparseable_and_422_naming_the_field_when_out_of_range(
) -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    stack.start_projector().await?;
    let many = (1..=501)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let cases: Vec<(String, StatusCode, Option<&str>)> = vec![
        (
            "/v1/courses?ids=1,abc".into(),
            StatusCode::BAD_REQUEST,
            None,
        ),
        ("/v1/courses?ids=1,0".into(), StatusCode::BAD_REQUEST, None),
        ("/v1/courses?ids=-4".into(), StatusCode::BAD_REQUEST, None),
        ("/v1/courses?ids=1,,2".into(), StatusCode::BAD_REQUEST, None),
        (
            "/v1/courses?ids=99999999999999999999".into(),
            StatusCode::BAD_REQUEST,
            None,
        ),
        ("/v1/courses".into(), StatusCode::BAD_REQUEST, None),
        (
            format!("/v1/courses?ids={many}"),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("ids"),
        ),
        (
            "/v1/categories/x/courses?limit=101".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("limit"),
        ),
        (
            "/v1/categories/x/courses?limit=0".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("limit"),
        ),
        (
            "/v1/categories/x/courses?offset=-1".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("offset"),
        ),
        (
            "/v1/categories/x/courses?sort=cheapest".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("sort"),
        ),
        (
            "/v1/categories/x/courses?limit=ten".into(),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "/v1/categories/x/courses?min_lsn=soon".into(),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "/v1/users/abc/courses".into(),
            StatusCode::BAD_REQUEST,
            None,
        ),
        ("/v1/users/0/courses".into(), StatusCode::BAD_REQUEST, None),
        (
            "/v1/users/1/courses?limit=1000".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("limit"),
        ),
        ("/v1/events/x".into(), StatusCode::BAD_REQUEST, None),
        ("/v1/orders/-1".into(), StatusCode::BAD_REQUEST, None),
    ];
    for (path, status, field) in cases {
        let a = stack.get(&path).await?;
        let shown = &path[..path.len().min(60)];
        assert_eq!(
            a.status,
            status,
            "{shown}: {}",
            String::from_utf8_lossy(&a.raw)
        );
        let code = if status == StatusCode::BAD_REQUEST {
            "bad_request"
        } else {
            "validation_failed"
        };
        assert_eq!(a.body["error"]["code"], code, "{shown}");
        assert!(a.body["error"]["message"].is_string(), "{shown}");
        match field {
            Some(field) => assert!(
                a.body["error"]["fields"][field].is_string(),
                "{shown}: {}",
                a.body
            ),
            None => assert!(
                a.body["error"].get("fields").is_none(),
                "{shown}: {}",
                a.body
            ),
        }
    }
    let wrong_method = stack
        .send(stack.http.post(format!("{}/v1/courses?ids=1", stack.query)))
        .await?;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.body["error"]["code"], "method_not_allowed");

    // The reference documents every read route.
    let reference = stack.get("/openapi.json").await?;
    assert_eq!(reference.status, StatusCode::OK);
    for path in [
        "/v1/courses",
        "/v1/categories/{category}/courses",
        "/v1/orders/{id}",
    ] {
        assert!(reference.body["paths"][path]["get"].is_object(), "{path}");
    }
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_of_different_courses_are_gathered_into_one_mget() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let mut courses = Vec::new();
    for i in 0..20 {
        // Long enough that each page is stored LZ4-compressed.
        let html = format!("<p>course {i}</p>").repeat(200);
        courses.push(
            stack
                .course(&format!("Course {i}"), &html, 1000 + i)
                .await?,
        );
    }
    let lsn = stack.current_lsn().await?;
    stack.start_projector().await?;
    ok(stack.get_fresh(&cards_path(&courses), &lsn).await?, "fresh");

    const DELAY: Duration = Duration::from_millis(300);
    let warm_up = format!("/v1/courses/{}", courses[0]);
    let (proxy, query, _stop) = slow_query_api(&stack, DELAY, &warm_up).await?;

    // Twenty reads at once: the first goes alone, the other nineteen arrive
    // while it is on its way and share the next MGET.
    let before = proxy.commands();
    let started = Instant::now();
    let readers: Vec<_> = courses
        .iter()
        .map(|id| {
            let http = stack.http.clone();
            let url = format!("{query}/v1/courses/{id}");
            tokio::spawn(async move {
                let response = http.get(url).send().await?;
                let status = response.status();
                let body: serde_json::Value = response.json().await?;
                anyhow::Ok((status, body))
            })
        })
        .collect();
    let mut pages = Vec::new();
    for reader in readers {
        pages.push(reader.await??);
    }
    let took = started.elapsed();
    let sent = proxy.commands_since(&before);

    for ((status, page), (i, id)) in pages.iter().zip(courses.iter().enumerate()) {
        assert_eq!(*status, StatusCode::OK, "{page}");
        assert_eq!(page["id"], *id, "each read gets its own course");
        assert_eq!(page["title"], format!("Course {i}"));
        assert_eq!(
            page["description_html"],
            format!("<p>course {i}</p>").repeat(200)
        );
    }
    let mgets = sent.get("MGET").copied().unwrap_or(0);
    assert!(
        (1..=2).contains(&mgets) && sent.len() == 1,
        "twenty concurrent reads sent {sent:?}"
    );
    assert!(took < 3 * DELAY, "two round trips at most, took {took:?}");
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gathered_reads_of_one_course_send_its_keys_once() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let html = "<p>the hot course</p>".repeat(300);
    let (course, lsn, (proxy, query, _stop)) =
        one_course_behind_slow_redis(&mut stack, &html).await?;

    // Twenty reads of one course at once, each with a reached token (so
    // none is answered by another's read): the first goes alone, the other
    // nineteen share the next MGET, which asks for each key once.
    let (mgets_before, reads_before) = mget_counters(&stack, &query).await?;
    let (commands, arguments) = (proxy.commands(), proxy.arguments());
    let readers: Vec<_> = (0..20)
        .map(|_| {
            let http = stack.http.clone();
            let url = format!("{query}/v1/courses/{course}");
            let token = lsn.clone();
            tokio::spawn(async move {
                let response = http.get(url).header("X-Min-Lsn", token).send().await?;
                let status = response.status();
                let body: serde_json::Value = response.json().await?;
                anyhow::Ok((status, body))
            })
        })
        .collect();
    for reader in readers {
        let (status, page) = reader.await??;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["id"], course);
        assert_eq!(page["description_html"], html.as_str());
    }
    let sent = proxy.commands_since(&commands);
    let keys = proxy.arguments_since(&arguments);
    let mgets = sent.get("MGET").copied().unwrap_or(0);
    assert!(
        (1..=2).contains(&mgets) && sent.len() == 1,
        "twenty concurrent reads sent {sent:?}"
    );
    // Marker, watermark, page and stats: four keys an MGET.
    assert_eq!(
        keys.get("MGET").copied(),
        Some(4 * mgets),
        "the MGETs asked for {keys:?}"
    );
    let (mgets_after, reads_after) = mget_counters(&stack, &query).await?;
    assert_eq!(
        (mgets_after - mgets_before, reads_after - reads_before),
        (mgets, 20),
        "the query API's own count of MGETs and the reads they carried"
    );
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_past_what_was_seen_polls_the_watermark_then_reads_once() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    stack.start_projector().await?;
    let course = stack.course("Fresh", "<p>f</p>", 5_000).await?;
    let (query, _stop, proxy) = {
        let proxy = SlowRedis::start(&stack.redis_url, Duration::from_millis(50)).await?;
        let (query, stop) = query_api_through(&proxy, &stack.prefix).await?;
        (query, stop, proxy)
    };
    // The query API sees a watermark from before the order.
    let seen = stack
        .send(stack.http.get(format!("{query}/v1/courses/{course}")))
        .await?;
    assert!(seen.status == StatusCode::OK || seen.status == StatusCode::NOT_FOUND);

    let user = stack.user("fresh@example.com", None).await?;
    let order = buy(
        &stack,
        "fresh-1",
        json!({"user_id": user, "course_ids": [course]}),
    )
    .await?;
    let id = order.body["id"].as_i64().expect("order id");
    let before = proxy.commands();
    let view = ok(
        stack
            .send(
                stack
                    .http
                    .get(format!("{query}/v1/orders/{id}"))
                    .header("X-Min-Lsn", order.header("x-commit-lsn")),
            )
            .await?,
        "the order at its own token",
    );
    let sent = proxy.commands_since(&before);
    assert_eq!(view.body["id"], id);
    // The token is past the last watermark this query API saw, so it waits on
    // the watermark (GETs) and then reads once: never a read thrown away.
    assert_eq!(sent.get("MGET").copied(), Some(1), "{sent:?}");
    assert!(sent.get("GET").copied().unwrap_or(0) >= 2, "{sent:?}");
    stack.cleanup().await
}

/// The commands `sent` through a proxy delaying every reply by `delay` were
/// one MGET and nothing else, answered in one round trip (`took`).
fn one_mget_in_one_delay(sent: &BTreeMap<String, u64>, took: Duration, delay: Duration) {
    assert!(
        took >= delay && took < 2 * delay,
        "one round trip takes one delay, took {took:?}"
    );
    assert_eq!(
        sent.iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect::<Vec<_>>(),
        [("MGET", 1)],
        "one MGET and nothing else: {sent:?}"
    );
}

/// Calls per command since Redis started (`INFO commandstats`), by name.
async fn command_calls(stack: &Stack) -> anyhow::Result<BTreeMap<String, u64>> {
    use fred::prelude::*;
    let info: String = stack
        .redis
        .info(Some(fred::types::InfoKind::CommandStats))
        .await?;
    Ok(info
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect())
}

/// A query API on an ephemeral port reading `prefix` through `proxy`; it
/// stops when the returned sender is dropped.
async fn query_api_through(
    proxy: &SlowRedis,
    prefix: &str,
) -> anyhow::Result<(String, oneshot::Sender<()>)> {
    let mut config =
        query_api::Config::for_tests(format!("redis://{}", proxy.addr).parse()?, prefix);
    // No pre-warming: its refreshes would cross the proxy during the count.
    config.prewarm_window = Duration::ZERO;
    // Every reply is held back: a Redis timeout far above the delay, or the
    // connection handshake and the reads would time out.
    config.redis_timeout_ms = 10_000;
    let app = query_api::Application::build(config).await?;
    let url = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    Ok((url, stop))
}

/// A query API whose only way to Redis is a [`SlowRedis`] holding every
/// reply back by `delay`, after a first read of `warm_up` (answered 200),
/// which teaches it the live generation.
async fn slow_query_api(
    stack: &Stack,
    delay: Duration,
    warm_up: &str,
) -> anyhow::Result<(SlowRedis, String, oneshot::Sender<()>)> {
    let proxy = SlowRedis::start(&stack.redis_url, delay).await?;
    let (query, stop) = query_api_through(&proxy, &stack.prefix).await?;
    ok(
        stack
            .send(stack.http.get(format!("{query}{warm_up}")))
            .await?,
        "warm-up: learns the live generation",
    );
    Ok((proxy, query, stop))
}

/// One course described by `html`, projected, and a query API behind a
/// [`SlowRedis`] (300 ms a round trip) that has read it once: the course,
/// the LSN it is projected at, and the proxy, URL and stop of that API.
async fn one_course_behind_slow_redis(
    stack: &mut Stack,
    html: &str,
) -> anyhow::Result<(i64, String, (SlowRedis, String, oneshot::Sender<()>))> {
    let course = stack.course("Popular", html, 1000).await?;
    let lsn = stack.current_lsn().await?;
    stack.start_projector().await?;
    let path = format!("/v1/courses/{course}");
    ok(stack.get_fresh(&path, &lsn).await?, "fresh");
    let slow = slow_query_api(stack, Duration::from_millis(300), &path).await?;
    Ok((course, lsn, slow))
}

/// The query API's `query_api_redis_mgets_total` and
/// `query_api_redis_mget_reads_total`.
async fn mget_counters(stack: &Stack, query: &str) -> anyhow::Result<(u64, u64)> {
    let metrics = stack
        .send(stack.http.get(format!("{query}/metrics")))
        .await?;
    let text = String::from_utf8_lossy(&metrics.raw);
    let counter = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok())
            .with_context(|| format!("no {name} in {text}"))
    };
    Ok((
        counter("query_api_redis_mgets_total")?,
        counter("query_api_redis_mget_reads_total")?,
    ))
}

/// A TCP proxy in front of Redis. Every reply chunk reaches the client
/// `delay` after Redis sent it (chunks are delayed side by side, not one
/// after another), so a read costs one `delay` per sequential round trip
/// whatever it carries; and it counts the commands the client sends.
struct SlowRedis {
    addr: SocketAddr,
    commands: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Arguments (keys, for an MGET) sent with each command, by name.
    arguments: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl SlowRedis {
    async fn start(redis_url: &str, delay: Duration) -> anyhow::Result<Self> {
        let upstream = redis_url
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let commands = Arc::new(Mutex::new(BTreeMap::new()));
        let arguments = Arc::new(Mutex::new(BTreeMap::new()));
        let counted = (commands.clone(), arguments.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, delay, counted.clone()));
            }
        });
        Ok(Self {
            addr,
            commands,
            arguments,
        })
    }

    fn commands(&self) -> BTreeMap<String, u64> {
        self.commands.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn arguments(&self) -> BTreeMap<String, u64> {
        self.arguments.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Commands sent since `before` was taken, by name.
    fn commands_since(&self, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
        since(self.commands(), before)
    }

    /// Arguments sent since `before` was taken, by command name.
    fn arguments_since(&self, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
        since(self.arguments(), before)
    }
}

/// `now` less `before`, name by name, without the names that did not move.
fn since(now: BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut sent = now;
    for (name, n) in before {
        if let Some(now) = sent.get_mut(name) {
            *now -= n;
        }
    }
    sent.retain(|_, n| *n > 0);
    sent
}

type Counts = Arc<Mutex<BTreeMap<String, u64>>>;

async fn relay(client: TcpStream, server: TcpStream, delay: Duration, counts: (Counts, Counts)) {
    let (commands, arguments) = counts;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Requests: forwarded at once, counted.
    tokio::spawn(async move {
        let mut pending = Vec::new();
        let mut chunk = vec![0; 64 * 1024];
        while let Ok(n @ 1..) = client_read.read(&mut chunk).await {
            pending.extend_from_slice(&chunk[..n]);
            while let Some((name, args, used)) = next_command(&pending) {
                pending.drain(..used);
                if let Ok(mut a) = arguments.lock() {
                    *a.entry(name.clone()).or_default() += args;
                }
                if let Ok(mut c) = commands.lock() {
                    *c.entry(name).or_default() += 1;
                }
            }
            if server_write.write_all(&chunk[..n]).await.is_err() {
                break;
            }
        }
    });
    // Replies: each chunk released `delay` after it arrived.
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    tokio::spawn(async move {
        let mut chunk = vec![0; 64 * 1024];
        while let Ok(n @ 1..) = server_read.read(&mut chunk).await {
            if tx
                .send((tokio::time::Instant::now() + delay, chunk[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
    });
    while let Some((due, bytes)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        if client_write.write_all(&bytes).await.is_err() {
            break;
        }
    }
}

/// The name of the first complete RESP command in `buf` (an array of bulk
/// strings, as clients send them), its number of arguments and its length
/// in bytes.
fn next_command(buf: &[u8]) -> Option<(String, u64, usize)> {
    fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = buf.get(at..)?.windows(2).position(|w| w == b"\r\n")? + at;
        Some((&buf[at..end], end + 2))
    }
    let (header, mut at) = line(buf, 0)?;
    let count: usize = std::str::from_utf8(header.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    let mut name = String::new();
    for i in 0..count {
        let (len, start) = line(buf, at)?;
        let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        let end = start + len;
        if buf.len() < end + 2 {
            return None;
        }
        if i == 0 {
            name = String::from_utf8_lossy(&buf[start..end]).to_uppercase();
        }
        at = end + 2;
    }
    Some((name, count.saturating_sub(1) as u64, at))
}
