//! Concurrent reads gathered into one MGET (one Redis only): a round trip
//! costs more than the read itself.
//!
//! While one MGET is on its way, arriving reads wait for the next, which
//! carries all their keys and is sent as soon as the first is answered; an
//! idle server sends each read alone. Each read still gets its keys read at
//! one instant (an MGET is atomic). A key asked by several reads (the
//! marker, the watermark, a sale's hot pages) is sent and parsed once, its
//! value shared. Written here because fred and redis-rs pipeline what is
//! queued: as many commands as reads.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex, OnceLock,
    },
};

use fred::{
    prelude::{Client, KeysInterface},
    types::{Key, Value},
};
use tokio::sync::Notify;

type Reply = Result<Vec<Value>, fred::error::Error>;

/// Most keys one gathered MGET carries; a read that would pass it is sent
/// on its own (pipelined behind the one in flight), so that large reads do
/// not make one command grow without bound.
const MAX_GATHERED_KEYS: usize = 2048;

/// The MGET gatherer of one client.
#[derive(Clone)]
pub(crate) struct Gather {
    client: Client,
    state: Arc<Mutex<State>>,
    /// MGETs sent, and the reads they carried.
    counts: Arc<Counts>,
}

/// How many MGETs were sent and how many reads they carried: their ratio
/// is how much gathering saves.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub sent: AtomicU64,
    pub reads: AtomicU64,
}

#[derive(Default)]
struct State {
    /// An MGET is on its way.
    busy: bool,
    /// The reads waiting for the next MGET.
    next: Option<Next>,
}

/// The next MGET: the batch its reads will read from, its distinct keys in
/// the order first asked, and where each key is among them.
struct Next {
    batch: Arc<Batch>,
    keys: Vec<Key>,
    at: HashMap<Key, usize, foldhash::fast::RandomState>,
    reads: u64,
}

/// The reply of one gathered MGET, awaited by the reads it carries.
#[derive(Default)]
struct Batch {
    reply: OnceLock<Reply>,
    done: Notify,
}

/// Sends the next batch when the MGET in flight is over, even if the read
/// that sent it is dropped before its answer (a cancelled request).
struct InFlight<'a>(&'a Gather);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.send_next();
    }
}

impl Gather {
    pub(crate) fn new(client: Client) -> Self {
        Gather {
            client,
            state: Arc::default(),
            counts: Arc::default(),
        }
    }

    /// MGETs sent, and reads carried, so far.
    pub(crate) fn counts(&self) -> &Counts {
        &self.counts
    }

    /// The values of `keys`, read at one instant: by an MGET of their own
    /// when none is in flight, else by the next one, shared with the reads
    /// that arrive meanwhile.
    pub(crate) async fn mget(&self, keys: Vec<Key>) -> Reply {
        let joined = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let gathered = state.next.as_ref().map_or(0, |next| next.keys.len());
            if !state.busy {
                state.busy = true;
                Err((keys, true))
            } else if gathered + keys.len() > MAX_GATHERED_KEYS {
                Err((keys, false))
            } else {
                let next = state.next.get_or_insert_with(Next::new);
                Ok((next.batch.clone(), next.join(keys)))
            }
        };
        let (batch, slots) = match joined {
            Ok(joined) => joined,
            Err((keys, leads)) => {
                // The read that found the way free sends the next batch
                // when it is answered.
                let _in_flight = leads.then_some(InFlight(self));
                self.counts.sent.fetch_add(1, Relaxed);
                self.counts.reads.fetch_add(1, Relaxed);
                return mget(&self.client, keys).await;
            }
        };
        let reply = batch.wait().await;
        match reply {
            Ok(values) => slots
                .iter()
                .map(|&at| {
                    values
                        .get(at)
                        .cloned()
                        .ok_or_else(|| short_reply(values.len(), at + 1))
                })
                .collect(),
            Err(err) => Err(err.clone()),
        }
    }

    /// Sends the waiting batch, if any, in a task of its own (its reads may
    /// be cancelled, the batch must not be); else marks the way free.
    fn send_next(&self) {
        let Next {
            batch, keys, reads, ..
        } = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match state.next.take() {
                Some(next) => next,
                None => {
                    state.busy = false;
                    return;
                }
            }
        };
        self.counts.sent.fetch_add(1, Relaxed);
        self.counts.reads.fetch_add(reads, Relaxed);
        // Reached from a drop too, possibly as the runtime shuts down: never
        // panic for want of one (the waiting reads are being dropped then).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = self.clone();
        runtime.spawn(async move {
            let _in_flight = InFlight(&this);
            let reply = mget(&this.client, keys).await;
            let _ = batch.reply.set(reply);
            batch.done.notify_waiters();
        });
    }
}

impl Next {
    fn new() -> Self {
        Next {
            batch: Arc::default(),
            keys: Vec::new(),
            at: HashMap::default(),
            reads: 0,
        }
    }

    /// Adds a read's keys (those not asked for yet) and returns where each
    /// of its keys will be in the reply.
    fn join(&mut self, keys: Vec<Key>) -> Vec<usize> {
        self.reads += 1;
        keys.into_iter()
            .map(|key| {
                let next = self.keys.len();
                let at = *self.at.entry(key.clone()).or_insert(next);
                if at == next {
                    self.keys.push(key);
                }
                at
            })
            .collect()
    }
}

impl Batch {
    async fn wait(&self) -> &Reply {
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(reply) = self.reply.get() {
                return reply;
            }
            notified.await;
        }
    }
}

async fn mget(client: &Client, keys: Vec<Key>) -> Reply {
    let values: Value = client.mget(keys).await?;
    Ok(values.into_array())
}

fn short_reply(got: usize, wanted: usize) -> fred::error::Error {
    fred::error::Error::new(
        fred::error::ErrorKind::Protocol,
        format!("MGET answered {got} values, {wanted} expected"),
    )
}
