//! One active projector per slot, any number of standbys: the instance that
//! holds the slot's advisory lock streams, the others wait for it.
//!
//! The lock is taken on the replication session itself, so it ends with the
//! walsender: at once when the process dies, after the session's
//! `wal_sender_timeout` when it freezes, and the slot is freed with it. A
//! deposed instance that wakes up can only write older stamps, which the view
//! scripts refuse: the stamps are the fence, not the lock.

use std::{
    sync::atomic::{AtomicU8, Ordering::Relaxed},
    time::Duration,
};

use anyhow::Context;
use pgwire_replication::{QueryRow, ReplicationClient};
use tokio::sync::watch;

use crate::{config::Config, source};

/// How often a standby looks at the lock. It takes a lock it has seen
/// free twice in a row, so the holder restarting its stream (a rebuild, a
/// lost generation) gets it back first, looking every [`REGRAB_POLL`].
const POLL: Duration = Duration::from_millis(250);

/// How often an instance whose own previous session still holds the lock
/// (it is closing) asks again.
const REGRAB_POLL: Duration = Duration::from_millis(20);

/// How long a new holder waits for the previous walsender to free the slot
/// (it releases the lock and the slot as it exits, not in one step).
const SLOT_RELEASE_WAIT: Duration = Duration::from_secs(10);

/// What an instance is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Connecting, or retrying after a failure.
    Starting,
    /// Another instance holds the slot's lock; this one waits.
    Standby,
    /// This instance holds the lock: it builds and streams.
    Active,
}

/// A [`Role`] shared between the daemon (writer) and `/ready`, `/metrics`.
#[derive(Debug, Default)]
pub struct RoleCell(AtomicU8);

impl RoleCell {
    pub fn get(&self) -> Role {
        match self.0.load(Relaxed) {
            1 => Role::Standby,
            2 => Role::Active,
            _ => Role::Starting,
        }
    }

    pub fn set(&self, role: Role) {
        let n = match role {
            Role::Starting => 0,
            Role::Standby => 1,
            Role::Active => 2,
        };
        self.0.store(n, Relaxed);
    }
}

/// The name the lock's key is hashed from: one lock per slot (slot names are
/// unique in a cluster; advisory locks are per database, as logical slots are).
fn lock_name(slot: &str) -> String {
    format!("cqrs.projector slot {}", slot.replace('\'', "''"))
}

/// The lock's 64-bit key as SQL: PostgreSQL hashes the name, so `projector
/// status` (or anyone with psql) finds the same lock.
fn lock_key_sql(slot: &str) -> String {
    format!("hashtextextended('{}', 0)", lock_name(slot))
}

/// The holder of `slot`'s lock: its application_name and backend pid.
/// `pg_locks` splits a bigint key into classid (high half) and objid (low).
fn holder_sql(slot: &str) -> String {
    format!(
        "SELECT coalesce(a.application_name, ''), l.pid::text \
           FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
          WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
            AND ((l.classid::bigint << 32) | l.objid::bigint) = {}",
        lock_key_sql(slot)
    )
}

/// The instance holding a slot's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its `--instance-name` (the replication session's application_name).
    pub name: String,
    /// The pid of its walsender on the server.
    pub pid: i32,
}

/// Who holds `slot`'s lock, asked on an ordinary connection.
pub async fn holder(pg: &tokio_postgres::Client, slot: &str) -> anyhow::Result<Option<Holder>> {
    let row = pg.query_opt(&holder_sql(slot), &[]).await?;
    Ok(row.and_then(|row| {
        Some(Holder {
            name: row.get(0),
            pid: row.get::<_, String>(1).parse().ok()?,
        })
    }))
}

/// Opens a gated replication session and returns it once it holds the
/// slot's lock and the slot is free, waiting as a standby meanwhile;
/// `None` when shutdown came first. Nothing is observed or written before:
/// only the holder takes rebuild requests or touches the slot.
pub async fn acquire(
    config: &Config,
    role: &RoleCell,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<Option<ReplicationClient>> {
    let mut repl = match ReplicationClient::connect_gated(source::replication_config(config)?).await
    {
        Ok(repl) => repl,
        Err(pgwire_replication::PgWireError::Tls(cause)) => {
            return Err(source::TlsRefused {
                address: source::DatabaseUrl::parse(&config.database.url)?.address(),
                cause,
            }
            .into())
        }
        Err(err) => return Err(err).context("opening the replication connection"),
    };
    let try_lock = format!(
        "SELECT pg_try_advisory_lock({})",
        lock_key_sql(&config.slot)
    );
    let who = holder_sql(&config.slot);
    let me = config.instance_name();
    // The holder waited for, by name: logged once, not once per try nor
    // once per restart of its stream.
    let mut waiting_for: Option<String> = None;
    // The lock was free at the previous look.
    let mut seen_free = false;
    loop {
        // A fresh start takes a free lock at once; a standby only one seen
        // free a poll ago, so a holder restarting its stream keeps it.
        if waiting_for.is_none() || seen_free {
            let rows = repl
                .simple_query(&try_lock)
                .await
                .context("asking for the slot's lock")?;
            if text(&rows, 0).as_deref() == Some("t") {
                break;
            }
        }
        let rows = repl
            .simple_query(&who)
            .await
            .context("asking who holds the slot's lock")?;
        let held_by = text(&rows, 0).zip(text(&rows, 1));
        seen_free = held_by.is_none();
        let poll = match held_by {
            // This instance's previous session (before its stream restarted)
            // is still closing: not a reason to call itself a standby.
            Some((name, _)) if name == me => REGRAB_POLL,
            Some((name, pid)) => {
                role.set(Role::Standby);
                if waiting_for.as_ref() != Some(&name) {
                    tracing::info!(
                        slot = %config.slot,
                        "standby: slot {} is held by {name} (pid {pid}); waiting",
                        config.slot,
                    );
                    waiting_for = Some(name);
                }
                POLL
            }
            None => POLL,
        };
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = async { stop.wait_for(|s| *s).await.is_ok() } => return Ok(None),
        }
    }
    wait_until_slot_free(&mut repl, &config.slot).await?;
    tracing::info!(
        slot = %config.slot,
        instance = %me,
        took_over = waiting_for.is_some(),
        "this instance is active for the slot"
    );
    Ok(Some(repl))
}

/// Waits until no walsender streams from `slot` (the previous holder's may
/// still be exiting).
async fn wait_until_slot_free(repl: &mut ReplicationClient, slot: &str) -> anyhow::Result<()> {
    let sql = format!(
        "SELECT active_pid::text FROM pg_replication_slots WHERE slot_name = '{}'",
        slot.replace('\'', "''")
    );
    let deadline = tokio::time::Instant::now() + SLOT_RELEASE_WAIT;
    loop {
        let rows = repl
            .simple_query(&sql)
            .await
            .context("reading the slot's state")?;
        let Some(pid) = text(&rows, 0) else {
            return Ok(());
        };
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "replication slot {slot} is streaming to pid {pid} although this instance holds \
             its lock: is a program other than the projector using the slot?"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Column `i` of the first row, as text (`None` for no row or NULL).
fn text(rows: &[QueryRow], i: usize) -> Option<String> {
    rows.first()?
        .get(i)?
        .as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_reads_back_as_it_was_set() {
        let cell = RoleCell::default();
        assert_eq!(cell.get(), Role::Starting);
        for role in [Role::Standby, Role::Active, Role::Starting] {
            cell.set(role);
            assert_eq!(cell.get(), role);
        }
    }

    #[test]
    fn the_lock_key_is_one_per_slot_and_quotes_what_it_embeds() {
        assert_eq!(
            lock_key_sql("cqrs_projector"),
            "hashtextextended('cqrs.projector slot cqrs_projector', 0)"
        );
        assert_ne!(lock_key_sql("a"), lock_key_sql("b"));
        assert!(lock_key_sql("it's").contains("it''s"));
        assert!(holder_sql("s").ends_with(&lock_key_sql("s")));
    }
}
