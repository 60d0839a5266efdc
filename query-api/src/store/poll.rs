//! One watermark poll per process, shared by every read waiting for its
//! token: N waiters cost Redis what one does.
//!
//! The poller is a task started by the first waiter and ended once no
//! waiter is left; each round it publishes what it read on a `watch`
//! channel, which every waiter follows with its own deadline. A
//! hand-written task, not a crate: it is a loop and a channel, and the only
//! subtle part (a waiter arriving as the poller stops) is settled by one
//! lock.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::watch;
use views::Lsn;

use super::{Store, StoreError};

/// Between two polls of the watermark.
const INTERVAL: Duration = Duration::from_millis(5);

/// What the poller last read: nothing yet, or the live generation's
/// watermark (or why it could not be read).
pub(crate) type Polled = Option<Result<Lsn, StoreError>>;

/// The running poller's channel, if one runs.
#[derive(Default)]
pub(crate) struct WatermarkPoll {
    /// Held while subscribing and while the poller decides to stop, so no
    /// waiter subscribes to a poller that has just left.
    running: Mutex<Option<Arc<watch::Sender<Polled>>>>,
}

impl WatermarkPoll {
    /// A receiver of every poll from now on, starting the poller if none
    /// runs. The value already in it may predate the call.
    pub(crate) fn subscribe(&self, store: &Store) -> Result<watch::Receiver<Polled>, StoreError> {
        let mut running = self.running.lock().map_err(|_| StoreError::Unavailable)?;
        if let Some(sender) = running.as_ref() {
            return Ok(sender.subscribe());
        }
        let (sender, receiver) = watch::channel(None);
        let sender = Arc::new(sender);
        *running = Some(sender.clone());
        tokio::spawn(poll(store.clone(), sender));
        tracing::debug!("watermark poller started");
        Ok(receiver)
    }

    /// Clears the running poller unless a waiter still follows it: true
    /// when it must stop.
    fn stop_if_idle(&self, sender: &Arc<watch::Sender<Polled>>) -> bool {
        let Ok(mut running) = self.running.lock() else {
            // Nobody can subscribe through a poisoned lock either.
            return true;
        };
        if sender.receiver_count() > 0 {
            return false;
        }
        if running.as_ref().is_some_and(|r| Arc::ptr_eq(r, sender)) {
            *running = None;
        }
        true
    }
}

/// Reads the watermark every [`INTERVAL`] while anyone waits.
async fn poll(store: Store, sender: Arc<watch::Sender<Polled>>) {
    loop {
        // Boxed: the read's future is large, and this one lives long.
        let polled = Box::pin(store.projection_lsn()).await;
        sender.send_replace(Some(polled));
        if store.poll.stop_if_idle(&sender) {
            tracing::debug!("watermark poller stopped: nobody waits");
            return;
        }
        tokio::time::sleep(INTERVAL).await;
    }
}
