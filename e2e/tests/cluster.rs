//! Redis Cluster, end to end: a three-primary cluster of this test's own,
//! with the real projector and query API on it through `REDIS_URL`'s
//! list-of-nodes form. Views are built, streamed, served (keys of one read on
//! several nodes), rebuilt, and the old generation is deleted from every node.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use e2e::{cards_path, redis_server::RedisCluster, Answer, Stack};
use fred::interfaces::KeysInterface;
use reqwest::StatusCode;
use serde_json::{json, Value as Json};

/// Asserts a 200 and returns the answer.
fn ok(a: Answer, what: &str) -> Answer {
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{what}: {}",
        String::from_utf8_lossy(&a.raw)
    );
    a
}

fn card_ids(a: &Answer) -> Vec<i64> {
    a.body["courses"]
        .as_array()
        .map(|cards| cards.iter().filter_map(|c| c["id"].as_i64()).collect())
        .unwrap_or_default()
}

/// Places order number `i`.
async fn buy(stack: &Stack, i: usize, body: Json) -> Result<Answer> {
    stack.order(&format!("cluster-{i}"), &body).await
}

/// The live generation, as the marker names it.
async fn live_generation(stack: &Stack) -> Result<u64> {
    let keys = views::Keys::new(stack.prefix.clone());
    let raw: Option<String> = stack.redis.get(keys.generation_marker()).await?;
    let marker: views::GenerationMarker = serde_json::from_str(&raw.context("no marker")?)?;
    Ok(marker.generation)
}

/// Whether the projector's `/ready` comes to say `want` within `within`.
async fn projector_ready_is(stack: &Stack, want: bool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let ready = stack
            .projector_get("/ready")
            .await
            .is_ok_and(|a| a.status == StatusCode::OK);
        if ready == want {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_are_built_served_and_rebuilt_across_a_three_primary_redis_cluster() -> Result<()> {
    let cluster = RedisCluster::start().await?;
    let started = Instant::now();
    let mut stack = Stack::start_with_redis(&cluster.url()).await?;
    assert!(
        fred::interfaces::ClientLike::is_clustered(&stack.redis),
        "a list of nodes is cluster mode"
    );

    // Arrange: a catalogue in two categories, a running sale, and orders,
    // half of them before the projector's first build.
    let mut courses = Vec::new();
    for i in 0..9 {
        let category = if i < 6 { "programming" } else { "design" };
        let html = if i == 0 {
            e2e::realistic_html(8 * 1024, 11)
        } else {
            format!("<p>course {i}</p>")
        };
        let id = stack
            .post(
                "/v1/courses",
                &json!({
                    "title": format!("Course {i}"), "summary": "s", "description_html": html,
                    "category": category, "instructor": "Park", "price_krw": 10_000,
                }),
            )
            .await?
            .created_id()?;
        courses.push(id);
    }
    let event = stack
        .post(
            "/v1/events",
            &json!({
                "name": "Cluster sale",
                "starts_at": (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339(),
                "ends_at": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
                "discount_percent": 50,
                "courses": [{"course_id": courses[1], "seat_limit": 10}, {"course_id": courses[2]}],
            }),
        )
        .await?
        .created_id()?;
    let companies = [Some("Acme"), Some("Acme"), Some("Globex"), None];
    let mut users = Vec::new();
    for (i, company) in companies.iter().enumerate() {
        users.push(stack.user(&format!("c{i}@example.com"), *company).await?);
    }
    for (i, &user) in users.iter().enumerate().take(2) {
        buy(
            &stack,
            i,
            json!({"user_id": user, "course_ids": [courses[0], courses[3]]}),
        )
        .await?
        .created_id()?;
    }

    // A primary that could evict views keeps the projector from starting,
    // whichever node it is; it starts once that node is fixed.
    let last = cluster.ports()[2];
    cluster.cli(last, &["config", "set", "maxmemory-policy", "allkeys-lru"])?;
    stack.spawn_projector()?;
    assert!(
        !projector_ready_is(&stack, true, Duration::from_secs(3)).await,
        "the projector must refuse a cluster with an evicting primary"
    );
    cluster.cli(last, &["config", "set", "maxmemory-policy", "noeviction"])?;
    stack.wait_projector_ready(Duration::from_secs(30)).await?;

    // Orders after the build arrive by streaming.
    buy(
        &stack,
        2,
        json!({"user_id": users[2], "course_ids": [courses[0], courses[1]], "event_id": event}),
    )
    .await?
    .created_id()?;
    let last_order = buy(
        &stack,
        3,
        json!({"user_id": users[3], "course_ids": [courses[4], courses[0]]}),
    )
    .await?;
    let lsn = last_order.header("x-commit-lsn").to_owned();
    let order_id = last_order.created_id()?;

    // A course page with its exact count and company tallies.
    let page = ok(
        stack
            .get_fresh(&format!("/v1/courses/{}", courses[0]), &lsn)
            .await?,
        "course page",
    );
    assert_eq!(page.body["student_count"], 4);
    let seen: views::Lsn = page.header("x-projection-lsn").parse()?;
    assert!(
        seen >= lsn.parse()?,
        "X-Projection-Lsn {seen} is at least the token {lsn}"
    );
    assert_eq!(
        page.body["top_companies"],
        json!([{"company": "Acme", "students": 2}, {"company": "Globex", "students": 1}])
    );
    assert!(page.body["description_html"]
        .as_str()
        .is_some_and(|h| h.len() >= 8 * 1024));

    // A cart whose cards live on several nodes: one read across the cluster.
    let generation = live_generation(&stack).await?;
    let keys = views::Keys::new(stack.prefix.clone());
    let cards_by_node = cluster.keys_by_node(&format!("{}:g{generation}:*:card", stack.prefix))?;
    let holders: BTreeSet<u16> = courses
        .iter()
        .map(|&id| {
            let key = keys.course_card(generation, id);
            let holders: Vec<u16> = cards_by_node
                .iter()
                .filter(|(_, keys)| keys.contains(&key))
                .map(|(port, _)| *port)
                .collect();
            assert_eq!(
                holders.len(),
                1,
                "{key} is on exactly one node: {holders:?}"
            );
            holders[0]
        })
        .collect();
    assert!(
        holders.len() >= 2,
        "the cart's cards lie on several nodes: {holders:?}"
    );
    let missing = courses[8] + 1000;
    let asked: Vec<i64> = courses
        .iter()
        .chain([&missing, &courses[0]])
        .copied()
        .collect();
    let cart = ok(stack.get_fresh(&cards_path(&asked), &lsn).await?, "cart");
    let mut expected = courses.clone();
    expected.push(courses[0]);
    assert_eq!(card_ids(&cart), expected);
    assert_eq!(cart.body["missing"], json!([missing]));
    assert_eq!(cart.body["courses"][0]["student_count"], 4);
    assert_eq!(cart.body["courses"][1]["sale"]["price_krw"], 5_000);

    // A category ranking, a library, an order, an event page.
    let popular = ok(
        stack
            .get_fresh("/v1/categories/programming/courses?sort=popular", &lsn)
            .await?,
        "ranking",
    );
    assert_eq!(
        card_ids(&popular),
        [courses[0], courses[3], courses[1], courses[4], courses[2], courses[5]]
    );
    assert_eq!(popular.body["total"], 6);
    let design = ok(
        stack
            .get_fresh("/v1/categories/design/courses?sort=newest", &lsn)
            .await?,
        "newest",
    );
    assert_eq!(card_ids(&design), [courses[8], courses[7], courses[6]]);
    let library = ok(
        stack
            .get_fresh(&format!("/v1/users/{}/courses", users[0]), &lsn)
            .await?,
        "library",
    );
    let mut bought = card_ids(&library);
    bought.sort();
    assert_eq!(bought, [courses[0], courses[3]]);
    let order = ok(
        stack
            .get_fresh(&format!("/v1/orders/{order_id}"), &lsn)
            .await?,
        "order",
    );
    assert_eq!(order.body["status"], "completed");
    assert_eq!(order.body["total_krw"], 20_000);
    let sale = ok(
        stack
            .get_fresh(&format!("/v1/events/{event}"), &lsn)
            .await?,
        "event",
    );
    assert_eq!(card_ids(&sale), [courses[1], courses[2]]);
    assert_eq!(sale.body["courses"][0]["sale"]["seats_left"], 9);

    // A rebuild, asked for with the same list of nodes: a new generation,
    // and the old one gone from every node once readers are past it.
    let status = tokio::process::Command::new(e2e::projector_binary()?)
        .arg("rebuild")
        .env("REDIS_URL", cluster.url())
        .env("KEY_PREFIX", &stack.prefix)
        .status()
        .await?;
    assert!(status.success(), "projector rebuild: {status}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while live_generation(&stack).await? == generation {
        assert!(Instant::now() < deadline, "no new generation within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rebuilt = live_generation(&stack).await?;
    let fresh = ok(
        stack.get(&format!("/v1/courses/{}", courses[0])).await?,
        "after the rebuild",
    );
    assert_eq!(fresh.body["student_count"], 4);
    let old = format!("{}:g{generation}:*", stack.prefix);
    let old_watermark = keys.watermark(generation);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left: usize = cluster
            .keys_by_node(&old)?
            .values()
            .map(BTreeSet::len)
            .sum();
        let watermark: Option<String> = stack.redis.get(old_watermark.as_str()).await?;
        if left == 0 && watermark.is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} keys of generation {generation} left within 20 s of the switch"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let new_keys = cluster.keys_by_node(&format!("{}:g{rebuilt}:*", stack.prefix))?;
    assert!(
        new_keys.values().filter(|keys| !keys.is_empty()).count() >= 2,
        "generation {rebuilt} (after {generation}) spans nodes: {new_keys:?}"
    );

    // The harness's clean-up reaches every node too.
    let prefix = stack.prefix.clone();
    stack.cleanup().await?;
    let left = cluster.keys_by_node(&format!("{prefix}:*"))?;
    assert!(
        left.values().all(BTreeSet::is_empty),
        "keys left after clean-up: {left:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    drop(cluster);
    Ok(())
}
