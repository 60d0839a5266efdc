//! PostgreSQL, the source: the control connection (publication, slot,
//! heartbeats), the replication connection, and the initial build.
//!
//! The build is exact: the slot exports a snapshot, every view is built from
//! it, and streaming starts at the slot's consistent point (nothing missed,
//! nothing twice).

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use anyhow::Context;
use pgwire_replication::{ReplicationClient, ReplicationConfig};
use tokio_postgres::{error::SqlState, Client};
use views::Lsn;

use futures_util::TryStreamExt;

use crate::{
    config::Config,
    projection::{stamp, Batch},
    sink::Sink,
};

mod scan;
mod tls;

pub use scan::Scan;
pub(crate) use tls::DatabaseUrl;

/// The write model's tables the projector reads. The migrations publish the
/// same list as `cqrs_projector` (migrations/0002_publication_and_grants.sql).
pub(crate) const PUBLISHED_TABLES: &[&str] = &[
    "courses",
    "sale_events",
    "sale_event_courses",
    "orders",
    "order_items",
    "enrollments",
];

/// Opens an ordinary SQL connection, with UTC and ISO dates so text values
/// read the same as the ones pgoutput sends; over TLS as `sslmode` says.
pub async fn connect(database_url: &str) -> anyhow::Result<Client> {
    let url = DatabaseUrl::parse(database_url)?;
    let (client, connection) = url
        .config()
        .connect(url.connector()?)
        .await
        .map_err(|err| match tls_cause(&err) {
            Some(cause) => anyhow::Error::new(TlsRefused {
                address: url.address(),
                cause,
            }),
            // Where, never the password.
            None => anyhow::Error::new(err).context(format!(
                "connecting to PostgreSQL at {}",
                service::redacted_url(database_url)
            )),
        })?;
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

/// The server's certificate failed the check `DATABASE_URL` asks for (or the
/// server refused TLS): a setting to fix, which retrying would meet again.
#[derive(Debug, thiserror::Error)]
#[error("connecting to PostgreSQL at {address} over TLS: {cause}")]
pub struct TlsRefused {
    pub address: String,
    pub cause: String,
}

/// The TLS failure behind a connection error, in rustls's words.
fn tls_cause(err: &tokio_postgres::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(err) = source {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        // An I/O error's `source` skips the error it wraps: look at it too.
        if let Some(tls) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls.to_string());
        }
        source = err.source();
    }
    // tokio-postgres's own words when the server answers the TLS request with no.
    let text = err.to_string();
    text.contains("server does not support TLS").then_some(text)
}

/// Checks that the publication exists; creates it when missing and the role
/// owns the tables. (The migrations create the default one, so a
/// least-privilege role runs with it.)
pub async fn ensure_publication(pg: &Client, publication: &str) -> anyhow::Result<()> {
    let exists = pg
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .is_some();
    if !exists {
        let created = pg
            .batch_execute(&format!(
                "CREATE PUBLICATION {publication} FOR TABLE {}",
                PUBLISHED_TABLES.join(", ")
            ))
            .await;
        match created {
            Ok(()) => tracing::info!(publication, "created publication"),
            Err(err) if err.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                anyhow::bail!(
                    "publication {publication} does not exist: apply the migrations \
                     (they create cqrs_projector), or run with a role that owns the tables"
                )
            }
            // Another projector of this database created it meanwhile (a
            // concurrent CREATE fails on the catalog's unique index).
            Err(err)
                if err.code() == Some(&SqlState::DUPLICATE_OBJECT)
                    || err.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
            Err(err) => {
                return Err(err).context("creating the publication (are the migrations applied?)")
            }
        }
    }
    // Whether it carries every table is checked by `schema::check_publication`:
    // a table taken out of it halts the stream rather than starving views.
    Ok(())
}

/// What PostgreSQL says of the slot.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub confirmed_flush: Lsn,
    pub wal_status: SlotStatus,
    pub active: bool,
    pub current_wal: Lsn,
    pub retained_bytes: u64,
}

/// Whether the slot's WAL is still there (`pg_replication_slots.wal_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotStatus {
    /// Within `max_wal_size`.
    Reserved,
    /// Past `max_wal_size`, kept by the slot.
    Extended,
    /// Past `max_slot_wal_keep_size`: removed at the next checkpoint unless
    /// the slot catches up.
    Unreserved,
    /// WAL the slot needs was removed: it can no longer stream.
    Lost,
    /// NULL (no WAL reserved yet) or a value this version does not know.
    Unreported,
}

impl SlotStatus {
    /// Reads PostgreSQL's text; anything unknown is [`SlotStatus::Unreported`].
    pub fn parse(text: &str) -> Self {
        match text {
            "reserved" => SlotStatus::Reserved,
            "extended" => SlotStatus::Extended,
            "unreserved" => SlotStatus::Unreserved,
            "lost" => SlotStatus::Lost,
            _ => SlotStatus::Unreported,
        }
    }

    /// PostgreSQL's text ("" when unreported).
    pub fn as_str(self) -> &'static str {
        match self {
            SlotStatus::Reserved => "reserved",
            SlotStatus::Extended => "extended",
            SlotStatus::Unreserved => "unreserved",
            SlotStatus::Lost => "lost",
            SlotStatus::Unreported => "",
        }
    }
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
            wal_status: SlotStatus::parse(row.get(1)),
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
    let url = DatabaseUrl::parse(&config.database.url)?;
    let pg = url.config();
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.to_string_lossy().into_owned(),
        None => "127.0.0.1".to_owned(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let tls = url.replication_tls(&host);
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
    .with_tls(tls)
    // wal_sender_timeout (settable per session since PostgreSQL 12) bounds
    // how long a frozen active instance keeps the slot and its lock.
    .with_options(format!(
        "-c TimeZone=UTC -c DateStyle=ISO -c wal_sender_timeout={}s",
        config.takeover_timeout_secs
    ))
    .with_application_name(config.instance_name())
    .with_status_interval(Duration::from_millis(200))
    .with_wakeup_interval(Duration::from_secs(5))
    .with_buffer_size(STREAM_BUFFER_EVENTS))
}

/// Replication events buffered between the socket and the pipeline: a
/// count, so it bounds bytes only with the rows' size (256 course rows of
/// 50 KB hold 13 MB; of the 256 KiB a request body may carry, 64 MiB).
/// Enough to keep the pipeline fed: past it the socket waits.
const STREAM_BUFFER_EVENTS: usize = 256;

/// Creates the slot with an exported snapshot on the gated session `repl`
/// and builds `generation` from it; returns the slot's consistent point, to
/// `start()` the session at.
pub async fn create_slot_and_build(
    repl: &mut ReplicationClient,
    config: &Config,
    sink: &Sink,
    generation: u64,
    rows_read: &AtomicU64,
) -> anyhow::Result<Lsn> {
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
    build_from_snapshot(
        config,
        sink,
        generation,
        &snapshot,
        consistent_point,
        rows_read,
    )
    .await?;
    Ok(consistent_point)
}

async fn build_from_snapshot(
    config: &Config,
    sink: &Sink,
    generation: u64,
    snapshot: &str,
    consistent_point: Lsn,
    rows_read: &AtomicU64,
) -> anyhow::Result<()> {
    let mut pg = connect(&config.database.url).await?;
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

    let mut build = SnapshotBuild {
        sink,
        generation,
        consistent_point,
        batch: SnapshotBuild::batch(consistent_point),
        index: 0,
        rows: 0,
        max_changes: config.flush_max_changes as usize,
        max_bytes: config.flush_max_bytes as usize,
        started: std::time::Instant::now(),
        last_log: std::time::Instant::now(),
        terminal: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        rows_read,
    };
    for scan in Scan::ALL {
        build
            .rows(&tx, &scan.sql(None), |b, row| {
                let stamp = b.next_stamp();
                scan.read(row)?.add_to(&mut b.batch, stamp);
                Ok(())
            })
            .await?;
    }
    build.flush().await?;
    if build.terminal {
        eprintln!();
    }
    tx.commit().await?;
    tracing::info!(
        rows = build.rows,
        elapsed_ms = build.started.elapsed().as_millis() as u64,
        generation,
        "initial build done"
    );
    Ok(())
}

/// Snapshot rows into batches, written like the live stream's with stamps
/// below any streamed change (their views say the consistent point as
/// `lsn`); memory is bounded by one batch, cut by changes or bytes like the
/// stream's.
struct SnapshotBuild<'a> {
    sink: &'a Sink,
    generation: u64,
    /// The slot's consistent point: the snapshot is exactly the data before it.
    consistent_point: Lsn,
    batch: Batch,
    index: u32,
    rows: u64,
    max_changes: usize,
    max_bytes: usize,
    started: std::time::Instant,
    last_log: std::time::Instant,
    /// Standard error is a terminal: draw a progress line.
    terminal: bool,
    /// Rows read so far, exported as `projector_snapshot_rows`.
    rows_read: &'a AtomicU64,
}

impl SnapshotBuild<'_> {
    fn batch(consistent_point: Lsn) -> Batch {
        Batch {
            snapshot_lsn: consistent_point,
            ..Batch::default()
        }
    }

    fn next_stamp(&mut self) -> String {
        self.index += 1;
        stamp(Lsn(0), self.index)
    }

    async fn rows(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
        sql: &str,
        mut each: impl FnMut(&mut Self, &tokio_postgres::Row) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let stream = tx
            .query_raw(
                sql,
                std::iter::empty::<&(dyn tokio_postgres::types::ToSql + Sync)>(),
            )
            .await?;
        futures_util::pin_mut!(stream);
        while let Some(row) = stream.try_next().await? {
            each(self, &row)?;
            self.rows += 1;
            if self.batch.is_full(self.max_changes, self.max_bytes) {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        if self.batch.changes == 0 {
            return Ok(());
        }
        self.sink.apply(self.generation, &self.batch).await?;
        self.batch = Self::batch(self.consistent_point);
        self.rows_read.store(self.rows, Relaxed);
        self.progress();
        Ok(())
    }

    /// A live progress line on a terminal; a log line every few seconds
    /// otherwise (log files and journals do not want carriage returns).
    fn progress(&mut self) {
        let elapsed = self.started.elapsed();
        let rate = self.rows as f64 / elapsed.as_secs_f64().max(0.001);
        if self.terminal {
            eprint!(
                "\r\x1b[2Kinitial build: {} rows, {:.0} rows/s, {:.1} s",
                self.rows,
                rate,
                elapsed.as_secs_f64()
            );
        } else if self.last_log.elapsed() >= std::time::Duration::from_secs(5) {
            self.last_log = std::time::Instant::now();
            tracing::info!(
                rows = self.rows,
                rows_per_sec = rate as u64,
                elapsed_ms = elapsed.as_millis() as u64,
                "initial build progress"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_statuses_read_and_print_as_postgres_writes_them() {
        for text in ["reserved", "extended", "unreserved", "lost"] {
            assert_eq!(SlotStatus::parse(text).as_str(), text);
        }
        assert_eq!(SlotStatus::parse("lost"), SlotStatus::Lost);
        assert_eq!(SlotStatus::parse(""), SlotStatus::Unreported);
        assert_eq!(SlotStatus::parse("normal"), SlotStatus::Unreported);
    }
}
