//! Concurrent reads gathered into one MGET (query end of command →
//! projector → query; one Redis only).
//!
//! A read's round trip costs the query API more than the read itself: a
//! socket write and read, and the wake-ups of the client's connection task.
//! While one MGET is on its way, the reads that arrive wait for the next
//! one, which carries all their keys; when the MGET in flight is answered,
//! the next is sent at once. An idle server sends each read alone, as
//! before; a busy one sends one command for several reads, each read still
//! getting its keys read at one instant (one MGET is atomic).
//!
//! Written here because no Redis client gathers commands this way: fred and
//! redis-rs pipeline what is queued, which sends as many commands as reads.

use std::sync::{Arc, Mutex, OnceLock};

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
}

#[derive(Default)]
struct State {
    /// An MGET is on its way.
    busy: bool,
    /// The reads waiting for the next MGET: the batch they will read from,
    /// and their keys, in the order they joined.
    next: Option<(Arc<Batch>, Vec<Key>)>,
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
        }
    }

    /// The values of `keys`, read at one instant: by an MGET of their own
    /// when none is in flight, else by the next one, shared with the reads
    /// that arrive meanwhile.
    pub(crate) async fn mget(&self, keys: Vec<Key>) -> Reply {
        let joined = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let gathered = state.next.as_ref().map_or(0, |(_, k)| k.len());
            if !state.busy {
                state.busy = true;
                Err((keys, true))
            } else if gathered + keys.len() > MAX_GATHERED_KEYS {
                Err((keys, false))
            } else {
                let (batch, gathered) = state.next.get_or_insert_with(Default::default);
                let start = gathered.len();
                gathered.extend(keys);
                Ok((batch.clone(), start, gathered.len()))
            }
        };
        let (batch, start, end) = match joined {
            Ok(joined) => joined,
            Err((keys, leads)) => {
                // The read that found the way free sends the next batch
                // when it is answered.
                let _in_flight = leads.then_some(InFlight(self));
                return mget(&self.client, keys).await;
            }
        };
        let reply = batch.wait().await;
        match reply {
            Ok(values) => values
                .get(start..end)
                .map(<[Value]>::to_vec)
                .ok_or_else(|| short_reply(values.len(), end)),
            Err(err) => Err(err.clone()),
        }
    }

    /// Sends the waiting batch, if any, in a task of its own (its reads may
    /// be cancelled, the batch must not be); else marks the way free.
    fn send_next(&self) {
        let (batch, keys) = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match state.next.take() {
                Some(next) => next,
                None => {
                    state.busy = false;
                    return;
                }
            }
        };
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
