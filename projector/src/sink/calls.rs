//! Calls of the views script on their way to Redis: gathered into batches
//! (one `EVALSHA` each) on a pipeline, and a flush's first step sent in
//! chunks while it is still being planned.

use fred::{
    clients::Pipeline,
    prelude::*,
    types::{scripts::Script, ClusterHash, CustomCommand},
};

use super::{
    script::{ArgBuf, Call, ScriptBatch},
    SinkError,
};

/// Entities (script calls) per chunk of a flush's first step: small enough
/// that Redis starts soon, large enough that a chunk's own costs (a task, a
/// round trip) stay small beside its commands.
const CHUNK_ENTITIES: usize = 256;

/// Calls per batch on one Redis: the script runs them all at once, so a
/// batch stays short for the readers waiting behind it.
const CALLS_PER_BATCH: usize = 32;

/// Arguments after which a batch is closed early, so a call with thousands
/// of entries (a bulk enrollment) makes a batch of its own.
const ARGS_PER_BATCH: usize = 2048;

/// A flush step sent in chunks while it is queued: each full chunk goes to
/// Redis at once on a task of its own, so the next chunk is planned
/// meanwhile. Chunks may run in any order: an entity is in one chunk only,
/// and the sorted-set writes are absolute.
pub(super) struct ChunkedStep {
    client: Client,
    script: Script,
    calls: Calls,
    queued: usize,
    sent: Vec<tokio::task::JoinHandle<Result<Vec<Value>, SinkError>>>,
}

impl ChunkedStep {
    pub(super) fn new(client: &Client, script: &Script) -> Self {
        Self {
            client: client.clone(),
            script: script.clone(),
            calls: Calls::new(client, script),
            queued: 0,
            sent: Vec::new(),
        }
    }

    /// The calls to queue the next entity on; sends the chunk before if it
    /// is full.
    pub(super) async fn next_entity(&mut self, buf: &mut ArgBuf) -> Result<&mut Calls, SinkError> {
        if self.queued == CHUNK_ENTITIES {
            self.send(buf).await?;
        }
        self.queued += 1;
        Ok(&mut self.calls)
    }

    async fn send(&mut self, buf: &mut ArgBuf) -> Result<(), SinkError> {
        let mut full = std::mem::replace(&mut self.calls, Calls::new(&self.client, &self.script));
        full.end_batch(buf).await?;
        self.queued = 0;
        self.sent.push(tokio::spawn(full.send()));
        Ok(())
    }

    /// The last chunk's pipeline, for commands that follow every call.
    pub(super) async fn last_pipe(
        &mut self,
        buf: &mut ArgBuf,
    ) -> Result<&Pipeline<Client>, SinkError> {
        self.calls.end_batch(buf).await?;
        Ok(&self.calls.pipe)
    }

    /// Sends nothing more and waits for the chunks already sent (queueing
    /// failed: none of this flush's chunks may reach Redis after whatever
    /// follows).
    pub(super) async fn abandon(self) {
        for chunk in self.sent {
            let _ = chunk.await;
        }
    }

    /// Sends the rest and returns every call's result, in the order queued.
    /// Every chunk is waited for, even after one failed, so that none can
    /// reach Redis after whatever follows the failure (a retry, the next
    /// stream's flushes).
    pub(super) async fn replies(mut self, buf: &mut ArgBuf) -> Result<Vec<Value>, SinkError> {
        let last = self.calls.end_batch(buf).await;
        if last.is_ok() {
            self.sent.push(tokio::spawn(self.calls.send()));
        }
        let mut replies = Vec::new();
        let mut failed = last.err();
        for chunk in self.sent {
            match chunk.await {
                Ok(Ok(chunk)) => replies.extend(chunk),
                Ok(Err(e)) => {
                    failed.get_or_insert(e);
                }
                Err(e) => {
                    failed.get_or_insert(SinkError::Reply(format!(
                        "a flush chunk's task failed: {e}"
                    )));
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(replies),
        }
    }
}

/// Script calls gathered into batches and queued on a pipeline, whose
/// first replies are the batches'. In a cluster a batch holds one call,
/// since a script's keys must share a slot.
pub(super) struct Calls {
    pub(super) pipe: Pipeline<Client>,
    sha: Value,
    per_batch: usize,
    batch: ScriptBatch,
    /// Batches queued on the pipeline so far.
    batches: usize,
}

impl Calls {
    pub(super) fn new(client: &Client, script: &Script) -> Self {
        Self {
            pipe: client.pipeline(),
            sha: script.sha1().clone().into(),
            per_batch: if client.is_clustered() {
                1
            } else {
                CALLS_PER_BATCH
            },
            batch: ScriptBatch::default(),
            batches: 0,
        }
    }

    /// Gathers one call; queues the batch if it is full.
    pub(super) async fn call(&mut self, buf: &mut ArgBuf, call: Call<'_>) -> Result<(), SinkError> {
        self.batch.push(buf, &call);
        if self.batch.calls() >= self.per_batch || self.batch.args() >= ARGS_PER_BATCH {
            self.end_batch(buf).await?;
        }
        Ok(())
    }

    /// Queues the calls gathered so far as one `EVALSHA` (fred 10's
    /// pipelines have no script interface), routed in a cluster by its
    /// first key.
    pub(super) async fn end_batch(&mut self, buf: &mut ArgBuf) -> Result<(), SinkError> {
        if self.batch.calls() == 0 {
            return Ok(());
        }
        let all = self.batch.take_evalsha(&self.sha, buf);
        let evalsha = CustomCommand::new("EVALSHA", ClusterHash::Offset(2), false);
        self.pipe.custom::<(), _>(evalsha, all).await?;
        self.batches += 1;
        Ok(())
    }

    /// Sends the pipeline (every batch ended before) and returns each
    /// call's result, in the order gathered.
    pub(super) async fn send(self) -> Result<Vec<Value>, SinkError> {
        debug_assert_eq!(self.batch.calls(), 0, "a batch was left open");
        let replies: Vec<Value> = self.pipe.all().await?;
        let mut results = Vec::new();
        for reply in replies.into_iter().take(self.batches) {
            match reply {
                Value::Array(calls) => results.extend(calls),
                other => {
                    return Err(SinkError::Reply(format!(
                        "a batch of view scripts answered {other:?}"
                    )))
                }
            }
        }
        Ok(results)
    }
}
