//! `projector audit`: the live views against the tables while the daemon
//! streams, `--repair`, `--sample`, and the daemon's own slow audit.

use std::time::Duration;

use e2e::Stack;
use fred::prelude::*;
use reqwest::StatusCode;
use serde_json::{json, Value as Json};

/// An RFC 3339 time `seconds` from now.
fn from_now(seconds: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(seconds)).to_rfc3339()
}

/// A shop with history: courses in two categories, users with and without
/// a company, a running sale with a limited seat, orders through it and
/// outside it, some cancelled. Returns the courses and users.
async fn shop(stack: &Stack, tag: &str) -> anyhow::Result<(Vec<i64>, Vec<i64>)> {
    let mut courses = Vec::new();
    for i in 0..4 {
        courses.push(
            stack
                .course(
                    &format!("{tag} course {i}"),
                    &format!("<p>{tag} {i}</p>"),
                    1000,
                )
                .await?,
        );
    }
    let mut users = Vec::new();
    for i in 0..10 {
        let company = ["Acme", "Globex", "Initech"].get(i % 4).copied();
        users.push(
            stack
                .user(&format!("{tag}{i}@example.com"), company)
                .await?,
        );
    }
    let design = stack
        .post(
            "/v1/courses",
            &json!({
                "title": "Design systems", "summary": "s",
                "description_html": e2e::realistic_html(6_000, 7),
                "category": "design", "instructor": "Lee", "price_krw": 30_000,
            }),
        )
        .await?
        .created_id()?;
    let event = stack
        .post(
            "/v1/events",
            &json!({
                "name": "Sale", "starts_at": from_now(-3600), "ends_at": from_now(86_400),
                "discount_percent": 50,
                "courses": [{"course_id": courses[0], "seat_limit": 3}, {"course_id": design}],
            }),
        )
        .await?
        .created_id()?;
    for (n, user) in users.iter().enumerate() {
        let body = if n % 2 == 0 {
            json!({"user_id": user, "course_ids": [courses[0], design], "event_id": event})
        } else {
            json!({"user_id": user, "course_ids": [courses[1], courses[3]]})
        };
        let order = stack.order(&format!("{tag}-{user}"), &body).await?;
        if order.status != StatusCode::CREATED {
            // The limited seats run out: the rest buy outside the sale.
            assert_eq!(
                order.body["error"]["code"],
                "sold_out",
                "{}",
                String::from_utf8_lossy(&order.raw)
            );
            let order = stack
                .order(
                    &format!("{tag}-{user}-b"),
                    &json!({"user_id": user, "course_ids": [courses[2]]}),
                )
                .await?;
            assert_eq!(order.status, StatusCode::CREATED);
            continue;
        }
        if n % 3 == 0 {
            let id = order.body["id"].as_i64().unwrap_or_default();
            let cancel = stack
                .post(&format!("/v1/orders/{id}/cancel"), &json!({}))
                .await?;
            assert_eq!(cancel.status, StatusCode::OK);
        }
    }
    Ok(([courses, vec![design]].concat(), users))
}

/// Waits until the query API shows everything committed so far.
async fn projected(stack: &Stack) -> anyhow::Result<()> {
    let lsn = stack.current_lsn().await?;
    let page = stack
        .get_fresh("/v1/categories/programming/courses", &lsn)
        .await?;
    anyhow::ensure!(
        page.status == StatusCode::OK,
        "not projected: {}",
        page.status
    );
    Ok(())
}

/// The live generation's key `key` names.
async fn live_key(
    stack: &Stack,
    key: impl Fn(&views::Keys, u64) -> String,
) -> anyhow::Result<String> {
    let keys = views::Keys::new(stack.prefix.clone());
    let marker: Option<String> = stack.redis.get(keys.generation_marker()).await?;
    let marker: views::GenerationMarker = serde_json::from_str(&marker.unwrap_or_default())?;
    Ok(key(&keys, marker.generation))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_audit_of_a_freshly_projected_stack_is_clean() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    // Half the history is built from the snapshot, half streamed.
    let (courses, _) = shop(&stack, "before").await?;
    stack.start_projector().await?;
    let (more_courses, _) = shop(&stack, "after").await?;
    projected(&stack).await?;

    // Orders keep streaming in while the audits run: changes in flight are
    // not mismatches.
    let mut buyers = Vec::new();
    for i in 0..60 {
        buyers.push(
            stack
                .user(&format!("busy{i}@example.com"), Some("Busy Corp"))
                .await?,
        );
    }
    let hot = [courses[0], more_courses[1], courses[4]];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = buyers
        .chunks(30)
        .map(|mine| {
            let (command, http, stop) = (stack.command.clone(), stack.http.clone(), stop.clone());
            let mine = mine.to_vec();
            tokio::spawn(async move {
                let mut orders = 0;
                for (n, user) in mine.into_iter().enumerate() {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let r = http
                        .post(format!("{command}/v1/orders"))
                        .header("Idempotency-Key", format!("busy-{user}"))
                        .json(&json!({"user_id": user, "course_ids": [hot[n % 3]]}))
                        .send()
                        .await?;
                    anyhow::ensure!(r.status() == StatusCode::CREATED, "order: {}", r.status());
                    orders += 1;
                    if n % 4 == 0 {
                        let id = r.json::<Json>().await?["id"].as_i64().unwrap_or_default();
                        http.post(format!("{command}/v1/orders/{id}/cancel"))
                            .send()
                            .await?;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                anyhow::Ok(orders)
            })
        })
        .collect();
    for _ in 0..3 {
        let audit = stack.audit(&[]).await?.ensure_clean()?;
        assert!(audit.mismatches().is_empty(), "{}", audit.stdout);
        assert!(audit.stdout.contains("result: clean"), "{}", audit.stdout);
        for (kind, at_least) in [
            ("courses", 10),
            ("events", 2),
            ("orders", 20),
            ("libraries", 20),
            ("categories", 2),
        ] {
            let checked = audit.checked(kind).unwrap_or(0);
            assert!(checked >= at_least, "{kind}: {checked}\n{}", audit.stdout);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut during = 0;
    for writer in writers {
        during += writer.await??;
    }
    assert!(during > 0, "no order streamed in during the audits");

    // Quiet again: still clean.
    projected(&stack).await?;
    stack.audit(&[]).await?.ensure_clean()?;
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_audit_finds_exactly_a_changed_view_and_a_changed_count_and_repair_makes_it_clean(
) -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    stack.start_projector().await?;
    let (courses, _) = shop(&stack, "repair").await?;
    projected(&stack).await?;
    let (titled, counted) = (courses[1], courses[0]);

    // A course page re-encoded with a wrong title.
    let page_key = live_key(&stack, |k, g| k.course_view(g, titled)).await?;
    let stored: Vec<u8> = stack.redis.get(&page_key).await?;
    let mut page: Json = serde_json::from_slice(&views::decode(&stored)?)?;
    let title = page["title"].as_str().unwrap_or_default().to_owned();
    page["title"] = json!("A wrong title");
    let wrong = views::encode(&serde_json::to_vec(&page)?);
    stack
        .redis
        .set::<(), _, _>(&page_key, wrong.as_slice(), None, None, false)
        .await?;
    // A student count changed in the aggregate.
    let agg_key = live_key(&stack, |k, g| k.course_agg(g, counted)).await?;
    let students: i64 = stack
        .pg
        .query_one(
            "SELECT count(*) FROM enrollments WHERE course_id = $1 AND revoked_at IS NULL",
            &[&counted],
        )
        .await?
        .get(0);
    stack
        .redis
        .hset::<(), _, _>(&agg_key, ("n", students + 40))
        .await?;

    let audit = stack.audit(&[]).await?;
    assert_eq!(audit.status, Some(1), "{}\n{}", audit.stdout, audit.stderr);
    let (titled_entity, counted_entity) = (format!("course {titled}"), format!("course {counted}"));
    assert_eq!(
        audit.mismatches(),
        [
            (counted_entity.clone(), "agg.n".to_owned()),
            (titled_entity.clone(), "view.title".to_owned()),
        ],
        "{}",
        audit.stdout
    );
    assert_eq!(
        audit.line(&titled_entity, "view.title"),
        Some(
            format!(
                "mismatch {titled_entity} view.title: redis \"A wrong title\" postgres \"{title}\""
            )
            .as_str()
        )
    );
    assert_eq!(
        audit.line(&counted_entity, "agg.n"),
        Some(
            format!(
                "mismatch {counted_entity} agg.n: redis {} postgres {students}",
                students + 40
            )
            .as_str()
        )
    );

    let repair = stack.audit(&["--repair"]).await?;
    assert_eq!(
        repair.status,
        Some(0),
        "{}\n{}",
        repair.stdout,
        repair.stderr
    );
    assert_eq!(repair.mismatches().len(), 2, "{}", repair.stdout);
    for entity in [&titled_entity, &counted_entity] {
        assert!(
            repair.stdout.contains(&format!("repaired {entity}\n")),
            "{}",
            repair.stdout
        );
    }
    assert!(
        repair.stdout.contains("after repair: clean"),
        "{}",
        repair.stdout
    );

    stack.audit(&[]).await?.ensure_clean()?;
    let page = stack.get(&format!("/v1/courses/{titled}")).await?;
    assert_eq!(page.body["title"], title.as_str());

    // The repaired course still counts what the stream brings, exactly once.
    let buyer = stack.user("later@example.com", Some("Acme")).await?;
    let order = stack
        .order("later", &json!({"user_id": buyer, "course_ids": [counted]}))
        .await?
        .ensure_status(StatusCode::CREATED)?;
    let page = stack
        .get_fresh(
            &format!("/v1/courses/{counted}"),
            order.header("x-commit-lsn"),
        )
        .await?;
    assert_eq!(page.body["student_count"], students + 1);
    let count: String = stack.redis.hget(&agg_key, "n").await?;
    assert_eq!(count, (students + 1).to_string());
    stack.audit(&[]).await?.ensure_clean()?;
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repair_while_orders_stream_into_the_course_loses_and_doubles_nothing(
) -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    stack.start_projector().await?;
    let (courses, _) = shop(&stack, "hot").await?;
    projected(&stack).await?;
    let hot = courses[2];
    let agg_key = live_key(&stack, |k, g| k.course_agg(g, hot)).await?;
    let count: Option<i64> = stack.redis.hget(&agg_key, "n").await?;
    stack
        .redis
        .hset::<(), _, _>(&agg_key, ("n", count.unwrap_or(0) + 40))
        .await?;

    // Orders (and cancels) on that very course, before, during and after
    // its repair, each by a new buyer, until a few after the repair.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (command, http, stop) = (stack.command.clone(), stack.http.clone(), stop.clone());
        tokio::spawn(async move {
            let mut after_stop = 0;
            for n in 0..1000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    after_stop += 1;
                    if after_stop > 5 {
                        break;
                    }
                }
                let user = http
                    .post(format!("{command}/v1/users"))
                    .json(&json!({"email": format!("buyer{n}@example.com"), "name": "B", "company": "Hot Inc"}))
                    .send()
                    .await?
                    .json::<Json>()
                    .await?["id"]
                    .as_i64()
                    .unwrap_or_default();
                let r = http
                    .post(format!("{command}/v1/orders"))
                    .header("Idempotency-Key", format!("hot-{user}"))
                    .json(&json!({"user_id": user, "course_ids": [hot]}))
                    .send()
                    .await?;
                anyhow::ensure!(r.status() == StatusCode::CREATED, "order: {}", r.status());
                if n % 5 == 0 {
                    let id = r.json::<Json>().await?["id"].as_i64().unwrap_or_default();
                    http.post(format!("{command}/v1/orders/{id}/cancel"))
                        .send()
                        .await?;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(after_stop)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut runs = Vec::new();
    let entity = format!("course {hot}");
    for _ in 0..10 {
        let run = stack.audit(&["--repair"]).await?;
        let repaired = run.stdout.contains(&format!("repaired {entity}\n"));
        assert!(
            run.status == Some(0) || !repaired,
            "{}\n{}",
            run.stdout,
            run.stderr
        );
        runs.push(run.stdout);
        if repaired {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let after_stop = writer.await??;
    assert!(
        runs.last()
            .is_some_and(|run| run.contains(&format!("repaired {entity}\n"))),
        "no repair of the course in {} runs:\n{}",
        runs.len(),
        runs.join("\n")
    );
    assert!(
        after_stop > 0,
        "the orders had stopped before the repair ended"
    );

    projected(&stack).await?;
    let audit = stack.audit(&[]).await?;
    let runs = runs.join("\n");
    assert_eq!(
        audit.status,
        Some(0),
        "{}\n{}\nafter the repairs:\n{runs}",
        audit.stdout,
        audit.stderr
    );
    let students: i64 = stack
        .pg
        .query_one(
            "SELECT count(*) FROM enrollments WHERE course_id = $1 AND revoked_at IS NULL",
            &[&hot],
        )
        .await?
        .get(0);
    let count: i64 = stack.redis.hget(&agg_key, "n").await?;
    assert_eq!(count, students, "{runs}");
    let page = stack.get(&format!("/v1/courses/{hot}")).await?;
    assert_eq!(page.body["student_count"], students, "{runs}");
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_audit_exports_its_mismatch_count() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (courses, _) = shop(&stack, "background").await?;
    let projector = stack.spawn_instance(
        "auditing",
        &[
            ("PROJECTOR_AUDIT_INTERVAL_SECS", "1"),
            ("PROJECTOR_AUDIT_SAMPLE", "0"),
        ],
    )?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while projector.ready().await.map(|(s, _)| s).ok() != Some(StatusCode::OK) {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "not ready within a minute"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    projected(&stack).await?;

    let metric = |name: &'static str| {
        let projector = &projector;
        async move { Ok::<_, anyhow::Error>(projector.metric(name).await?.unwrap_or(-1.0)) }
    };
    while metric("projector_audit_runs_total").await? < 1.0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no audit within a minute"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(metric("projector_audit_mismatches").await?, 0.0);

    let agg_key = live_key(&stack, |k, g| k.course_agg(g, courses[2])).await?;
    stack.redis.hset::<(), _, _>(&agg_key, ("n", 777)).await?;
    let runs = metric("projector_audit_runs_total").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while metric("projector_audit_mismatches").await? == 0.0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the audit did not report the hand edit within a minute"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(metric("projector_audit_mismatches").await?, 1.0);
    assert!(metric("projector_audit_runs_total").await? > runs);
    // Each difference is a warning naming the entity, the field and both values.
    let warned = projector.logged("a view differs from the tables");
    assert!(
        warned
            .iter()
            .any(|line| line.contains(&format!("course {}", courses[2]))
                && line.contains("agg.n")
                && line.contains("777")),
        "{}",
        projector.tail(20)
    );
    // It reports; it never repairs.
    let count: String = stack.redis.hget(&agg_key, "n").await?;
    assert_eq!(count, "777");
    projector.kill().await?;
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_audit_checks_at_most_n_entities_per_kind_and_no_generation_is_status_2(
) -> anyhow::Result<()> {
    // As the projector's least-privilege role: the audit needs no more.
    e2e::ensure_roles().await?;
    let mut stack = Stack::start_as(&e2e::PgRoles {
        command: None,
        projector: Some(e2e::PROJECTOR_ROLE.to_owned()),
    })
    .await?;
    shop(&stack, "sample").await?;
    let nothing = stack.audit(&[]).await?;
    assert_eq!(
        nothing.status,
        Some(2),
        "{}\n{}",
        nothing.stdout,
        nothing.stderr
    );
    assert!(
        nothing.stderr.contains("no live view generation"),
        "{}",
        nothing.stderr
    );

    stack.start_projector().await?;
    projected(&stack).await?;
    let audit = stack.audit(&["--sample", "2"]).await?.ensure_clean()?;
    assert!(
        audit.stdout.contains("sample of at most 2 per kind"),
        "{}",
        audit.stdout
    );
    // Five courses, one event, ten orders, ten buyers, two categories.
    for (kind, expected) in [
        ("courses", 2),
        ("events", 1),
        ("orders", 2),
        ("libraries", 2),
        ("categories", 2),
    ] {
        assert_eq!(
            audit.checked(kind),
            Some(expected),
            "{kind}\n{}",
            audit.stdout
        );
    }
    let all = stack.audit(&[]).await?;
    assert_eq!(all.checked("courses"), Some(5), "{}", all.stdout);
    assert!(all.checked("orders").unwrap_or(0) >= 10, "{}", all.stdout);
    stack.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_and_its_cancel_leave_the_values_of_a_course_but_not_its_row_versions(
) -> anyhow::Result<()> {
    // A repair proves nothing moved around its write by comparing two reads;
    // values cannot tell an order and its cancel from nothing at all.
    let stack = Stack::start().await?;
    let (courses, _) = shop(&stack, "net").await?;
    let (course, other) = (courses[1], courses[3]);
    let subject = projector::AuditSubject::Course(course);
    let active = "SELECT count(*) FROM enrollments WHERE course_id = $1 AND revoked_at IS NULL";
    let students_before: i64 = stack.pg.query_one(active, &[&course]).await?.get(0);
    let before = projector::row_versions(&stack.pg, &subject).await?;
    assert_eq!(
        projector::row_versions(&stack.pg, &subject).await?,
        before,
        "nothing changed, nothing moved"
    );

    // An order of another course leaves this one's rows alone.
    let buyer = stack.user("elsewhere@example.com", Some("Acme")).await?;
    stack
        .order(
            "elsewhere",
            &json!({"user_id": buyer, "course_ids": [other]}),
        )
        .await?
        .ensure_status(StatusCode::CREATED)?;
    assert_eq!(projector::row_versions(&stack.pg, &subject).await?, before);

    // An order of this course and its cancel: the same values, new rows.
    let buyer = stack.user("undecided@example.com", Some("Acme")).await?;
    let order = stack
        .order(
            "undecided",
            &json!({"user_id": buyer, "course_ids": [course]}),
        )
        .await?
        .ensure_status(StatusCode::CREATED)?;
    let id = order.body["id"].as_i64().unwrap_or_default();
    stack
        .post(&format!("/v1/orders/{id}/cancel"), &json!({}))
        .await?
        .ensure_status(StatusCode::OK)?;
    let students_after: i64 = stack.pg.query_one(active, &[&course]).await?.get(0);
    assert_eq!(
        students_after, students_before,
        "the values add up to nothing"
    );
    assert_ne!(
        projector::row_versions(&stack.pg, &subject).await?,
        before,
        "yet the rows the course is built from moved"
    );
    stack.cleanup().await
}
