//! PostgreSQL, the source: the control connection (publication, slot
//! inspection, heartbeats), the replication connection, and the initial
//! build from a consistent snapshot.
//!
//! The initial build is exact by construction: the slot is created with an
//! exported snapshot, every view is built from that snapshot, and streaming
//! starts at the slot's consistent point, so the stream carries exactly the
//! transactions the snapshot does not contain (nothing missed, nothing twice).

use std::{collections::HashMap, str::FromStr, time::Duration};

use anyhow::Context;
use pgwire_replication::{ReplicationClient, ReplicationConfig, TlsConfig};
use tokio_postgres::{Client, NoTls};
use views::Lsn;

use crate::{
    config::Config,
    projection::{CourseAggregate, SNAPSHOT_STAMP},
    sink::Sink,
};

/// The write model's tables the projector reads.
const PUBLISHED_TABLES: &str =
    "users, courses, sale_events, sale_event_courses, event_seats, orders, order_items, enrollments";

/// Courses written to Redis per pipeline during the initial build.
const SNAPSHOT_CHUNK: usize = 200;

/// Opens an ordinary SQL connection, with UTC and ISO dates so text values
/// read the same as the ones pgoutput sends.
pub async fn connect(database_url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(database_url, NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::warn!(error = %err, "postgres control connection closed");
        }
    });
    client
        .batch_execute("SET TIME ZONE 'UTC'; SET DateStyle = 'ISO'")
        .await?;
    Ok(client)
}

/// Creates the publication unless it exists.
pub async fn ensure_publication(pg: &Client, publication: &str) -> anyhow::Result<()> {
    let exists = pg
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .is_some();
    if !exists {
        pg.batch_execute(&format!(
            "CREATE PUBLICATION {publication} FOR TABLE {PUBLISHED_TABLES}"
        ))
        .await
        .context("creating the publication (are the migrations applied?)")?;
        tracing::info!(publication, "created publication");
    }
    Ok(())
}

/// What PostgreSQL says of the slot.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub confirmed_flush: Lsn,
    pub wal_status: String,
    pub active: bool,
    pub current_wal: Lsn,
    pub retained_bytes: u64,
}

/// The slot's state, or `None` when it does not exist.
pub async fn slot_info(pg: &Client, slot: &str) -> anyhow::Result<Option<SlotInfo>> {
    let row = pg
        .query_opt(
            "SELECT coalesce(confirmed_flush_lsn, '0/0')::text, coalesce(wal_status, ''), active, \
                    pg_current_wal_lsn()::text, \
                    coalesce(pg_current_wal_lsn() - restart_lsn, 0)::bigint \
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(match row {
        None => None,
        Some(row) => Some(SlotInfo {
            confirmed_flush: row.get::<_, String>(0).parse()?,
            wal_status: row.get(1),
            active: row.get(2),
            current_wal: row.get::<_, String>(3).parse()?,
            retained_bytes: row.get::<_, i64>(4).max(0) as u64,
        }),
    })
}

/// Drops the slot (it must not be in use).
pub async fn drop_slot(pg: &Client, slot: &str) -> anyhow::Result<()> {
    pg.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .with_context(|| format!("dropping replication slot {slot}"))?;
    Ok(())
}

/// Writes a heartbeat into the WAL so an idle slot keeps advancing.
pub async fn heartbeat(pg: &Client) -> anyhow::Result<()> {
    pg.execute(
        "SELECT pg_logical_emit_message(false, 'cqrs.heartbeat', '')",
        &[],
    )
    .await?;
    Ok(())
}

/// The replication connection's settings, taken from the database URL.
pub fn replication_config(config: &Config) -> anyhow::Result<ReplicationConfig> {
    let pg =
        tokio_postgres::Config::from_str(&config.database_url).context("parsing DATABASE_URL")?;
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.to_string_lossy().into_owned(),
        None => "127.0.0.1".to_owned(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let user = pg.get_user().unwrap_or("postgres").to_owned();
    let password = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let database = pg.get_dbname().unwrap_or(&user).to_owned();
    Ok(ReplicationConfig::new(
        host,
        user,
        password,
        database,
        config.slot.clone(),
        config.publication.clone(),
    )
    .with_port(port)
    .with_tls(TlsConfig::disabled())
    .with_options("-c TimeZone=UTC -c DateStyle=ISO")
    .with_application_name("cqrs-projector")
    .with_status_interval(Duration::from_millis(200))
    .with_wakeup_interval(Duration::from_secs(5))
    .with_buffer_size(4096))
}

/// Creates the slot with an exported snapshot, builds `generation` from it,
/// and returns the client ready to `start()` streaming from the consistent
/// point, with that point.
pub async fn create_slot_and_build(
    config: &Config,
    sink: &Sink,
    generation: u64,
    metrics: &crate::metrics::Metrics,
) -> anyhow::Result<(ReplicationClient, Lsn)> {
    let mut repl = ReplicationClient::connect_gated(replication_config(config)?)
        .await
        .context("opening the replication connection")?;
    let rows = repl
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')",
            config.slot
        ))
        .await
        .context("creating the replication slot")?;
    let row = rows
        .first()
        .context("CREATE_REPLICATION_SLOT returned no row")?;
    let text = |i: usize| {
        row.get(i)
            .and_then(|v| v.as_ref())
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .with_context(|| format!("CREATE_REPLICATION_SLOT: column {i} missing"))
    };
    let consistent_point: Lsn = text(1)?.parse()?;
    let snapshot = text(2)?;
    tracing::info!(slot = %config.slot, %consistent_point, snapshot, "created replication slot; building views from its snapshot");
    build_from_snapshot(config, sink, generation, &snapshot, metrics).await?;
    Ok((repl, consistent_point))
}

async fn build_from_snapshot(
    config: &Config,
    sink: &Sink,
    generation: u64,
    snapshot: &str,
    metrics: &crate::metrics::Metrics,
) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut pg = connect(&config.database_url).await?;
    let tx = pg
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    // The snapshot name comes from the server; quoting keeps it a literal.
    tx.batch_execute(&format!(
        "SET TRANSACTION SNAPSHOT '{}'",
        snapshot.replace('\'', "''")
    ))
    .await
    .context("importing the slot's snapshot")?;

    let mut tallies: HashMap<i64, Vec<(String, i64)>> = HashMap::new();
    let mut counts: HashMap<i64, i64> = HashMap::new();
    for row in tx
        .query(
            "SELECT course_id, coalesce(company, ''), count(*) FROM enrollments \
              WHERE revoked_at IS NULL GROUP BY course_id, coalesce(company, '')",
            &[],
        )
        .await?
    {
        let (course, company, n): (i64, String, i64) = (row.get(0), row.get(1), row.get(2));
        *counts.entry(course).or_default() += n;
        if !company.is_empty() {
            tallies.entry(course).or_default().push((company, n));
        }
    }

    // Courses in chunks by id (keyset paging), so memory stays bounded by the
    // chunk size whatever the number of courses.
    let mut after = 0i64;
    let started = std::time::Instant::now();
    let mut built = 0u64;
    loop {
        let rows = tx
            .query(
                "SELECT id, title, summary, description_html, category, instructor, \
                        price_krw::text, created_at::text \
                   FROM courses WHERE id > $1 ORDER BY id LIMIT $2",
                &[&after, &(SNAPSHOT_CHUNK as i64)],
            )
            .await?;
        if rows.is_empty() {
            break;
        }
        let mut chunk = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row.get(0);
            after = id;
            let mut agg: HashMap<String, String> = HashMap::new();
            for (i, name) in [
                "title",
                "summary",
                "description_html",
                "category",
                "instructor",
                "price_krw",
                "created_at",
            ]
            .iter()
            .enumerate()
            {
                agg.insert((*name).to_owned(), row.get(i + 1));
            }
            agg.insert(
                "n".into(),
                counts.get(&id).copied().unwrap_or(0).to_string(),
            );
            agg.insert("stamp".into(), SNAPSHOT_STAMP.to_owned());
            chunk.push(CourseAggregate {
                id,
                fields: agg,
                tallies: tallies.remove(&id).unwrap_or_default(),
            });
        }
        sink.write_snapshot_courses(generation, &chunk).await?;
        built += chunk.len() as u64;
        metrics.snapshot_courses.store(built, Relaxed);
        if built % 5_000 < SNAPSHOT_CHUNK as u64 {
            tracing::info!(
                courses = built,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "initial build progress"
            );
        }
    }
    tx.commit().await?;
    drop(pg);
    tracing::info!(
        courses = built,
        elapsed_ms = started.elapsed().as_millis() as u64,
        generation,
        "initial build done"
    );
    Ok(())
}
