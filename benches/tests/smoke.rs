//! The smoke run of every scenario, so the harness never rots: it checks
//! that each scenario produced numbers, never how fast they are.
//!
//! Needs the local stack (`bash deploy/local.sh up`) and the programs built
//! beside this test (`cargo build --workspace --bins`); `deploy/local.sh
//! test` does both.

use std::path::PathBuf;

use serde_json::Value;

fn out_dir() -> PathBuf {
    std::env::temp_dir().join(format!("benches-smoke-{}", std::process::id()))
}

/// `target/<profile>`: where cargo put the workspace's program binaries.
fn bin_dir() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_bench"));
    exe.parent().map(PathBuf::from).unwrap_or_default()
}

fn number(v: &Value, path: &str) -> f64 {
    let mut at = v;
    for part in path.split('.') {
        at = match part.parse::<usize>() {
            Ok(i) => &at[i],
            Err(_) => &at[part],
        };
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number: {at}"))
}

#[test]
fn every_scenario_produces_numbers_in_a_smoke_run() {
    let out = out_dir();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_bench"));
    command
        .arg("--smoke")
        .arg("--out")
        .arg(&out)
        .arg("--bin-dir")
        .arg(bin_dir());
    if let Ok(url) = std::env::var("TEST_DATABASE_URL") {
        command.arg("--database-url").arg(url);
    }
    if let Ok(url) = std::env::var("TEST_REDIS_URL") {
        command.arg("--redis-url").arg(url);
    }
    let output = command.output().expect("the bench binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench --smoke failed ({}):\n{}\n{stderr}",
        output.status,
        String::from_utf8_lossy(&output.stdout)
    );

    let json = std::fs::read_dir(&out)
        .expect("the report directory exists")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("a JSON summary was written");
    let r: Value = serde_json::from_slice(&std::fs::read(&json).expect("readable")).expect("JSON");
    assert_eq!(
        r["errors"].as_array().map(Vec::len),
        Some(0),
        "{}",
        r["errors"]
    );

    // Reads: every subject answered at saturation and on the schedule.
    let reads = r["reads"].as_array().expect("reads");
    let keys: Vec<&str> = reads.iter().filter_map(|s| s["key"].as_str()).collect();
    for key in [
        "bare",
        "redis_get",
        "hot",
        "hot_redis",
        "random",
        "pg_count",
        "pg_companies",
        "cart",
    ] {
        assert!(keys.contains(&key), "read subject {key} missing: {keys:?}");
    }
    for s in reads {
        assert!(
            number(s, "saturation.ok") > 0.0,
            "{} answered nothing",
            s["key"]
        );
        assert_eq!(
            number(s, "saturation.errors"),
            0.0,
            "{} had errors",
            s["key"]
        );
        // A schedule slower than one request per phase may have none due in
        // its window (a busy machine's slow subject): nothing to check then.
        if !s["at_90"].is_null()
            && number(s, "at_90.offered_rps") * number(s, "at_90.duration_s") >= 1.0
        {
            assert!(
                number(s, "at_90.ok") > 0.0,
                "{} answered nothing on the schedule",
                s["key"]
            );
            assert!(number(s, "at_90.latency.p50_ms") > 0.0);
        }
    }
    assert!(number(&r, "cart.cart.latency.p50_ms") > 0.0);
    assert!(number(&r, "cart.single.latency.p50_ms") > 0.0);

    // Orders, pgbench, freshness, the stream, bytes per view, redis-benchmark,
    // takeovers, overload, the rush, the all-in-one.
    let orders = r["orders"].as_array().expect("orders");
    assert_eq!(orders.len(), 4, "spread and hot, command API and monolith");
    for s in orders {
        assert!(
            number(s, "saturation.ok") > 0.0,
            "{} placed no order",
            s["key"]
        );
        assert_eq!(
            number(s, "saturation.errors"),
            0.0,
            "{} had failed orders",
            s["key"]
        );
    }
    assert!(number(&r, "pgbench.tps") > 0.0);
    let freshness = r["freshness"].as_array().expect("freshness");
    assert_eq!(freshness.len(), 3);
    for f in freshness {
        assert!(number(f, "orders") > 0.0);
        assert_eq!(number(f, "unseen"), 0.0, "every order became visible");
        assert!(number(f, "max_ms") >= number(f, "p50_ms"));
    }
    assert!(number(&r, "stream.changes") > 0.0);
    assert!(number(&r, "stream.recvlogical_changes_per_s") > 0.0);
    assert!(number(&r, "stream.projector_changes_per_s") > 0.0);
    let ratio = number(&r, "storage.view_ratio");
    assert!(
        ratio > 0.0 && ratio < 1.0,
        "LZ4 stores fewer bytes than raw: {ratio}"
    );
    assert_eq!(r["redis_benchmark"].as_array().map(Vec::len), Some(2));
    let kills = r["takeover"]["kills"].as_array().expect("takeover kills");
    assert_eq!(kills.len(), 3, "every kill was taken over");
    for k in kills {
        assert!(number(k, "visible_ms") >= number(k, "written_ms"));
    }
    assert!(number(&r, "takeover.max_ms") >= number(&r, "takeover.p50_ms"));
    assert!(number(&r, "takeover.stream_orders") > 0.0);
    assert!(number(&r, "overload.capacity_rps") > 0.0);
    let admissions = r["overload"]["admissions"]
        .as_array()
        .expect("overload admissions");
    assert_eq!(
        admissions.len(),
        3,
        "the admission as shipped, with the pool sized to the cores, and the old one"
    );
    for a in admissions {
        let rounds = a["rounds"].as_array().expect("overload rounds");
        assert_eq!(rounds.len(), 1, "{}", a["key"]);
        for round in rounds {
            assert!(
                number(round, "unloaded.ok") > 0.0,
                "{} placed no order",
                a["key"]
            );
            assert!(
                number(round, "overload.ok") > 0.0,
                "{} accepted nothing",
                a["key"]
            );
            // Not speed: whatever was shed said when to come back, and the
            // database holds exactly the orders answered 201.
            assert_eq!(
                number(round, "shed_without_retry_after"),
                0.0,
                "{}",
                a["key"]
            );
            let w = &round["written"];
            assert_eq!(
                number(w, "orders"),
                number(w, "created"),
                "{}: {w}",
                a["key"]
            );
            for untrue in ["lost", "written_by_refused", "written_otherwise"] {
                assert_eq!(number(w, untrue), 0.0, "{}: {w}", a["key"]);
            }
        }
    }

    // The rush: every phase of its round answered (every read a 2xx, so
    // every path of the mix exists), every order became visible, and the
    // cores of the processes it started were read.
    let rush_rounds = r["rush"]["rounds"].as_array().expect("rush rounds");
    assert_eq!(rush_rounds.len(), 1);
    for round in rush_rounds {
        for phase in ["reads_alone", "reads", "orders_alone", "orders"] {
            assert!(
                number(round, &format!("{phase}.ok")) > 0.0,
                "rush: {phase} answered nothing"
            );
        }
        for phase in ["reads_alone", "reads"] {
            assert_eq!(
                number(round, &format!("{phase}.errors")),
                0.0,
                "rush: {phase} had failed reads"
            );
        }
        for lags in ["orders_alone_freshness", "freshness", "served"] {
            assert!(
                number(round, &format!("{lags}.orders")) > 0.0,
                "rush: {lags}"
            );
            assert_eq!(
                number(round, &format!("{lags}.unseen")),
                0.0,
                "rush: every order became visible ({lags})"
            );
        }
        for process in [
            "query_api",
            "command_api",
            "projector",
            "redis",
            "load_generator",
        ] {
            assert!(number(round, &format!("cores.{process}")) >= 0.0);
        }
        assert!(
            number(round, "warm_hits") > 0.0,
            "the event's pages were served pre-warmed"
        );
    }

    // The all-in-one and the three processes: each took its turn, its reads
    // and orders answered, every order on the schedule became visible, and
    // the cores of its own processes were read.
    let deployments = r["all_in_one"]["deployments"]
        .as_array()
        .expect("all-in-one deployments");
    assert_eq!(deployments.len(), 2, "the all-in-one and three processes");
    for d in deployments {
        let key = d["key"].as_str().expect("a key");
        assert!(number(d, "initial_build_s") > 0.0, "{key}");
        let rounds = d["rounds"].as_array().expect("all-in-one rounds");
        assert_eq!(rounds.len(), 1, "{key}");
        for round in rounds {
            for phase in ["hot", "hot_redis", "orders", "fresh_orders"] {
                assert!(
                    number(round, &format!("{phase}.ok")) > 0.0,
                    "{key}: {phase} answered nothing"
                );
            }
            // Orders on a schedule may be shed on a busy machine (a debug
            // build): the lag then has a reason instead of a value.
            for phase in ["hot", "hot_redis", "orders"] {
                assert_eq!(
                    number(round, &format!("{phase}.errors")),
                    0.0,
                    "{key}: {phase} had errors"
                );
            }
            assert!(number(round, "freshness.orders") > 0.0, "{key}");
            assert_eq!(
                number(round, "freshness.unseen"),
                0.0,
                "{key}: every order became visible"
            );
            let program = match key {
                "one" => "all_in_one",
                _ => "command_api",
            };
            for cores in [
                "hot_cores",
                "hot_redis_cores",
                "freshness_cores",
                "orders_cores",
            ] {
                assert!(
                    number(round, &format!("{cores}.{program}")) >= 0.0,
                    "{key}: {cores}"
                );
            }
        }
    }

    // Every ratio of the table has a value, or says why the host could
    // not carry the load it is stated at (a busy machine is not a failure);
    // and the report and plots exist.
    for ratio in r["ratios"].as_array().expect("ratios") {
        assert!(
            ratio["value"].as_f64().is_some() != ratio["unmeasured"].is_string(),
            "a ratio has either a value or a reason it has none: {ratio}"
        );
    }
    let name = r["meta"]["name"].as_str().expect("name");
    let md = std::fs::read_to_string(out.join(format!("{name}.md"))).expect("the Markdown report");
    assert!(md.contains("## The ratios"));
    for plot in ["throughput", "latency", "timeline", "freshness"] {
        let png = out.join(format!("{name}-{plot}.png"));
        let bytes = std::fs::read(&png).unwrap_or_else(|_| panic!("{} missing", png.display()));
        assert!(bytes.starts_with(b"\x89PNG"), "{} is a PNG", png.display());
    }
    let _ = std::fs::remove_dir_all(&out);
}
