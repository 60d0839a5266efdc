//! A consistent point to compare at: one REPEATABLE READ snapshot of the
//! write model, the WAL position read in the statement that takes it, and
//! the transaction-id horizon a later snapshot passes to see every
//! transaction that could have committed before that position.

use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;
use tokio_postgres::Client;
use views::{Keys, Lsn};

use crate::source;

/// How often the watermark and the snapshot horizon are polled.
const POLL: Duration = Duration::from_millis(20);

/// An open snapshot on the audit's snapshot connection; [`Cut::close`]
/// ends it (the connection holds no other transaction).
pub(super) struct Cut<'a> {
    pg: &'a Client,
    /// Every transaction the snapshot sees wrote its commit record before
    /// this position (read after the snapshot was taken).
    pub lsn: Lsn,
}

impl<'a> Cut<'a> {
    /// Takes a snapshot that sees every transaction with an id below
    /// `horizon` as finished (0: any snapshot), waiting for the ones still
    /// running until `deadline`.
    pub(super) async fn open(
        pg: &'a Client,
        horizon: u64,
        deadline: Instant,
    ) -> anyhow::Result<Self> {
        loop {
            pg.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .context("opening the audit's snapshot")?;
            // The snapshot is taken as this statement starts, so every
            // commit it sees was written before the position it returns.
            let row = pg
                .query_one(
                    "SELECT pg_current_wal_insert_lsn()::text, \
                            pg_snapshot_xmin(pg_current_snapshot())::text",
                    &[],
                )
                .await;
            let row = match row {
                Ok(row) => row,
                Err(err) => {
                    let _ = pg.batch_execute("ROLLBACK").await;
                    return Err(err).context("reading the snapshot's position");
                }
            };
            let lsn: Lsn = row.get::<_, String>(0).parse()?;
            let xmin: u64 = row.get::<_, String>(1).parse()?;
            if xmin >= horizon {
                return Ok(Cut { pg, lsn });
            }
            pg.batch_execute("ROLLBACK").await?;
            anyhow::ensure!(
                Instant::now() < deadline,
                "a transaction older than the audit's first pass is still running \
                 (transaction id {xmin}): no later snapshot sees everything the first one missed"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The snapshot's connection, for reads in it.
    pub(super) fn pg(&self) -> &Client {
        self.pg
    }

    /// Ends the snapshot.
    pub(super) async fn close(self) -> anyhow::Result<()> {
        self.pg.batch_execute("COMMIT").await?;
        Ok(())
    }
}

/// The first transaction id not yet handed out: every transaction that has
/// written anything so far has an id below it. Read on a connection with no
/// snapshot of its own.
pub(super) async fn next_xid(control: &Client) -> anyhow::Result<u64> {
    let row = control
        .query_one("SELECT pg_snapshot_xmax(pg_current_snapshot())::text", &[])
        .await
        .context("reading the next transaction id")?;
    Ok(row.get::<_, String>(0).parse()?)
}

/// Waits until the projector has applied every change up to `lsn` in
/// `generation` (its watermark passed it), nudging the stream with
/// heartbeats so an idle database gets there too; fails at `deadline`.
pub(super) async fn wait_applied(
    redis: &fred::clients::Client,
    keys: &Keys,
    control: &Client,
    generation: u64,
    lsn: Lsn,
    deadline: Instant,
) -> anyhow::Result<()> {
    use fred::interfaces::KeysInterface;
    let mut beat = Instant::now();
    let mut first = true;
    loop {
        let raw: Option<String> = redis.get(keys.watermark(generation)).await?;
        let watermark = raw.and_then(|r| r.parse::<Lsn>().ok()).unwrap_or_default();
        if watermark >= lsn {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the projector did not apply the changes up to {lsn} in time (generation {generation} \
             stays at {watermark}): is it running and streaming into the live generation?"
        );
        // A heartbeat lies past `lsn`: the stream moves the watermark to it
        // once everything before is applied, even when nothing else writes.
        if first || beat.elapsed() >= Duration::from_secs(1) {
            first = false;
            beat = Instant::now();
            source::heartbeat(control).await?;
        }
        tokio::time::sleep(POLL).await;
    }
}
