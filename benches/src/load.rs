//! The load generator: a lean HTTP/1.1 client (hyper, one connection per
//! task, no pool) that saturates or holds a fixed rate.
//!
//! - Saturation: each connection sends its next request as soon as the
//!   previous answer is read.
//! - Fixed rate (open loop): request `i` is due at `start + i / rate`, and
//!   its latency counts from then, so a stall is never hidden by the
//!   generator slowing down (no coordinated omission). A connection that
//!   slept until the due time counts from the actual send, so the timer's
//!   own lateness is not blamed on the service.
//!
//! Every run is bounded: nothing is sent after its end, and answers still
//! outstanding 15 s later are abandoned.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{client::conn::http1::SendRequest, header, Request};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

/// A request body.
pub type Body = Full<Bytes>;

/// Builds request number `n` of a run (path-only URI).
pub type MakeRequest = Arc<dyn Fn(u64) -> Request<Body> + Send + Sync>;

/// Longest wait for one answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// How the load is offered.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Closed loop: as fast as `connections` connections allow.
    Saturate { connections: usize },
    /// Open loop: `per_second` requests per second, on up to `connections`.
    Rate { per_second: f64, connections: usize },
}

/// One load phase.
#[derive(Debug, Clone)]
pub struct Spec {
    pub label: String,
    pub mode: Mode,
    /// Load before the measured window, not counted.
    pub warmup: Duration,
    pub duration: Duration,
    /// A response header whose value is kept for every successful answer
    /// (the freshness scenario keeps `X-Commit-Lsn`), and in [`Answer`] for
    /// every answer (the overload scenario checks 503s for `Retry-After`).
    pub capture: Option<&'static str>,
}

/// A captured header of one successful answer, and when the answer arrived.
#[derive(Debug, Clone)]
pub struct Captured {
    pub done: Instant,
    pub value: String,
}

/// Latency percentiles of a phase, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    /// Percentiles of a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// One slice of a phase's timeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tick {
    /// Seconds since the measured window opened (end of the slice).
    pub t_s: f64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// What a phase measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase {
    pub label: String,
    /// `saturation` or `fixed rate`.
    pub mode: String,
    pub connections: usize,
    /// Offered requests per second (fixed rate only).
    pub offered_rps: Option<f64>,
    /// Successful answers per second in the measured window.
    pub achieved_rps: f64,
    pub ok: u64,
    pub errors: u64,
    /// Answers by status (0: no answer: a connection error, a timeout, or,
    /// on a fixed schedule, a request still unsent when the run ended).
    pub statuses: BTreeMap<u16, u64>,
    pub duration_s: f64,
    pub latency: Latency,
    pub timeline: Vec<Tick>,
}

/// A phase's summary, the captured headers, and every request's answer.
pub struct Outcome {
    pub phase: Phase,
    pub captured: Vec<Captured>,
    /// Every request of the run, warm-up included, in no particular order.
    pub answers: Vec<Answer>,
    /// The measured window, in microseconds since the run started.
    pub window_us: (u64, u64),
}

/// One request's answer (or failure), in microseconds since the run started.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The number the request was made from.
    pub n: u64,
    /// When the request was due (fixed rate) or sent (saturation).
    pub start_us: u64,
    pub done_us: u64,
    pub latency_us: u64,
    /// 0: no answer (a connection error, a timeout, or never sent).
    pub status: u16,
    /// The `capture` header of the answer, whatever its status.
    pub header: Option<String>,
}

impl Answer {
    /// Due (fixed rate) or sent (saturation) inside `window`.
    pub fn started_in(&self, (from, to): (u64, u64)) -> bool {
        self.start_us >= from && self.start_us < to
    }
}

/// Runs one phase against `addr`.
pub async fn run(addr: SocketAddr, make: MakeRequest, spec: &Spec) -> Result<Outcome> {
    let origin = Instant::now();
    let window_start = origin + spec.warmup;
    let end = window_start + spec.duration;
    let next = Arc::new(AtomicU64::new(0));
    let (connections, rate) = match spec.mode {
        Mode::Saturate { connections } => (connections.max(1), None),
        Mode::Rate {
            per_second,
            connections,
        } => (connections.max(1), Some(per_second.max(0.001))),
    };
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let make = make.clone();
        let next = next.clone();
        let capture = spec.capture;
        tasks.push(tokio::spawn(async move {
            connection_loop(addr, make, next, origin, end, rate, capture).await
        }));
    }
    let mut records = Vec::new();
    let mut captured = Vec::new();
    let hard_stop = tokio::time::Instant::from_std(end + REQUEST_TIMEOUT + Duration::from_secs(1));
    for task in tasks {
        match tokio::time::timeout_at(hard_stop, task).await {
            Ok(joined) => {
                let (r, c) = joined.context("a load connection task failed")?;
                records.extend(r);
                captured.extend(c);
            }
            Err(_) => {
                tracing::warn!(label = %spec.label, "a load connection did not finish in time");
            }
        }
    }
    let window = (
        spec.warmup.as_micros() as u64,
        (spec.warmup + spec.duration).as_micros() as u64,
    );
    let phase = summarize(spec, rate, connections, &records, window)?;
    captured.retain(|c| c.done >= window_start);
    Ok(Outcome {
        phase,
        captured,
        answers: records,
        window_us: window,
    })
}

async fn connection_loop(
    addr: SocketAddr,
    make: MakeRequest,
    next: Arc<AtomicU64>,
    origin: Instant,
    end: Instant,
    rate: Option<f64>,
    capture: Option<&'static str>,
) -> (Vec<Answer>, Vec<Captured>) {
    let mut records = Vec::new();
    let mut captured = Vec::new();
    let mut sender: Option<SendRequest<Body>> = None;
    let us = |t: Instant| t.saturating_duration_since(origin).as_micros() as u64;
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let start = match rate {
            Some(rate) => {
                let due = origin + Duration::from_secs_f64(n as f64 / rate);
                if due >= end {
                    break;
                }
                let now = Instant::now();
                if now >= end {
                    // Due during the run but no connection came free before
                    // it ended: the service fell behind the schedule. Counted
                    // as a failure (status 0) and never sent, so a run
                    // stays bounded however far behind it is.
                    records.push(Answer {
                        n,
                        start_us: us(due),
                        done_us: us(now),
                        latency_us: now.saturating_duration_since(due).as_micros() as u64,
                        status: 0,
                        header: None,
                    });
                    continue;
                }
                if now < due {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
                    // Idle until due: count from the actual send.
                    Instant::now()
                } else {
                    // Late because every connection was busy: count from due.
                    due
                }
            }
            None => {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                now
            }
        };
        if sender.is_none() {
            match connect(addr).await {
                Ok(s) => sender = Some(s),
                Err(_) => {
                    let done = Instant::now();
                    records.push(Answer {
                        n,
                        start_us: us(start),
                        done_us: us(done),
                        latency_us: (done - start).as_micros() as u64,
                        status: 0,
                        header: None,
                    });
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        let request = make(n);
        let result =
            tokio::time::timeout(REQUEST_TIMEOUT, exchange(s, request, addr, capture)).await;
        let done = Instant::now();
        let (status, header) = match result {
            Ok(Ok((status, value))) => {
                if let (Some(value), true) = (&value, (200..300).contains(&status)) {
                    captured.push(Captured {
                        done,
                        value: value.clone(),
                    });
                }
                (status, value)
            }
            Ok(Err(_)) | Err(_) => {
                sender = None;
                (0, None)
            }
        };
        records.push(Answer {
            n,
            start_us: us(start),
            done_us: us(done),
            latency_us: done.saturating_duration_since(start).as_micros() as u64,
            status,
            header,
        });
    }
    (records, captured)
}

/// Opens one HTTP/1.1 connection.
async fn connect(addr: SocketAddr) -> Result<SendRequest<Body>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends one request and reads the whole answer.
async fn exchange(
    sender: &mut SendRequest<Body>,
    mut request: Request<Body>,
    addr: SocketAddr,
    capture: Option<&'static str>,
) -> Result<(u16, Option<String>)> {
    if !request.headers().contains_key(header::HOST) {
        if let Ok(host) = header::HeaderValue::from_str(&addr.to_string()) {
            request.headers_mut().insert(header::HOST, host);
        }
    }
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let value = capture.and_then(|name| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    // Read the whole body: a client has not got its answer before that.
    let _ = response.into_body().collect().await?.to_bytes();
    Ok((status, value))
}

fn summarize(
    spec: &Spec,
    rate: Option<f64>,
    connections: usize,
    records: &[Answer],
    (from, to): (u64, u64),
) -> Result<Phase> {
    let mut latency = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let mut statuses = BTreeMap::new();
    let (mut ok, mut errors, mut completed_ok) = (0u64, 0u64, 0u64);
    let slice_us: u64 = if spec.duration >= Duration::from_secs(5) {
        1_000_000
    } else {
        100_000
    };
    let slices = ((to - from).div_ceil(slice_us)).max(1) as usize;
    let mut per_slice: Vec<Histogram<u64>> = (0..slices)
        .map(|_| Histogram::<u64>::new_with_bounds(1, 120_000_000, 2))
        .collect::<Result<_, _>>()?;
    for r in records {
        let ok_status = (200..300).contains(&r.status);
        // Fixed rate: every request due in the window counts, however late
        // its answer; saturation: every answer that arrived in the window.
        let counted = match rate {
            Some(_) => r.start_us >= from && r.start_us < to,
            None => r.done_us >= from && r.done_us < to,
        };
        if ok_status && r.done_us >= from && r.done_us < to {
            completed_ok += 1;
            let slice = ((r.done_us - from) / slice_us) as usize;
            if let Some(h) = per_slice.get_mut(slice) {
                let _ = h.record(r.latency_us.max(1));
            }
        }
        if !counted {
            continue;
        }
        *statuses.entry(r.status).or_insert(0) += 1;
        if ok_status {
            ok += 1;
            let _ = latency.record(r.latency_us.max(1));
        } else {
            errors += 1;
        }
    }
    let seconds = (to - from) as f64 / 1e6;
    let timeline = per_slice
        .iter()
        .enumerate()
        .map(|(i, h)| Tick {
            t_s: ((i as u64 + 1) * slice_us) as f64 / 1e6,
            rps: h.len() as f64 / (slice_us as f64 / 1e6),
            p50_ms: if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(0.5) as f64 / 1000.0
            },
            p99_ms: if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(0.99) as f64 / 1000.0
            },
        })
        .collect();
    Ok(Phase {
        label: spec.label.clone(),
        mode: match rate {
            Some(_) => "fixed rate".to_owned(),
            None => "saturation".to_owned(),
        },
        connections,
        offered_rps: rate,
        achieved_rps: completed_ok as f64 / seconds,
        ok,
        errors,
        statuses,
        duration_s: seconds,
        latency: Latency::of(&latency),
        timeline,
    })
}

/// One keep-alive connection for a sequence of requests (a poller's), opened
/// again after a failure.
pub struct Connection {
    addr: SocketAddr,
    sender: Option<SendRequest<Body>>,
}

impl Connection {
    /// A connection to `addr`, opened on first use.
    pub fn new(addr: SocketAddr) -> Self {
        Connection { addr, sender: None }
    }

    /// Sends `request` and reads the whole answer: its status and headers.
    pub async fn send(&mut self, mut request: Request<Body>) -> Result<(u16, header::HeaderMap)> {
        if self.sender.is_none() {
            self.sender = Some(connect(self.addr).await?);
        }
        let Some(sender) = self.sender.as_mut() else {
            anyhow::bail!("no connection to {}", self.addr);
        };
        if let Ok(host) = header::HeaderValue::from_str(&self.addr.to_string()) {
            request.headers_mut().insert(header::HOST, host);
        }
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            response.into_body().collect().await?;
            anyhow::Ok((status, headers))
        })
        .await;
        match answer {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(err)) => {
                self.sender = None;
                Err(err)
            }
            Err(_) => {
                self.sender = None;
                anyhow::bail!("no answer within {REQUEST_TIMEOUT:?}")
            }
        }
    }
}

/// A GET request for `path`.
pub fn get_request(path: &str) -> Request<Body> {
    let mut request = Request::new(Body::new(Bytes::new()));
    if let Ok(uri) = path.parse() {
        *request.uri_mut() = uri;
    }
    request
}

/// A JSON POST with extra headers.
pub fn post_json(path: &str, body: Vec<u8>, headers: &[(&'static str, String)]) -> Request<Body> {
    let mut request = Request::new(Body::new(Bytes::from(body)));
    *request.method_mut() = hyper::Method::POST;
    if let Ok(uri) = path.parse() {
        *request.uri_mut() = uri;
    }
    let h = request.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    for (name, value) in headers {
        if let Ok(value) = header::HeaderValue::from_str(value) {
            h.insert(*name, value);
        }
    }
    request
}

/// One GET on a fresh connection: status and body (for set-up and checks).
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, Bytes)> {
    let (status, _, body) = send(addr, get_request(path)).await?;
    Ok((status, body))
}

/// One request on a fresh connection: status, headers and body (for
/// set-up, checks and single timed writes).
pub async fn send(
    addr: SocketAddr,
    mut request: Request<Body>,
) -> Result<(u16, header::HeaderMap, Bytes)> {
    let mut sender = tokio::time::timeout(Duration::from_secs(5), connect(addr))
        .await
        .context("connect timed out")??;
    if let Ok(host) = header::HeaderValue::from_str(&addr.to_string()) {
        request.headers_mut().insert(header::HOST, host);
    }
    let response = tokio::time::timeout(Duration::from_secs(10), async {
        sender.ready().await?;
        sender.send_request(request).await
    })
    .await
    .context("request timed out")??;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, headers, body))
}
