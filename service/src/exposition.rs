//! A program's metrics and their `/metrics` answer, in the Prometheus text
//! format. Each program (each test app) has a recorder of its own, never the
//! process-wide one, so several can run in one process.

use std::{sync::Arc, time::Duration};

use axum::{
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Metadata the exporter ignores but registration asks for.
static METADATA: Metadata<'static> = Metadata::new("service", metrics::Level::INFO, None);

/// How often histogram samples are folded into their buckets between
/// scrapes, so memory stays bounded when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// The content type of the Prometheus text format.
const TEXT_FORMAT: HeaderValue =
    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");

/// One program's metrics.
#[derive(Debug)]
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl Metrics {
    /// A recorder whose `histograms` (name, bucket upper bounds in seconds)
    /// are bucketed histograms. Inside a runtime, a task folds samples
    /// until the metrics are dropped.
    pub fn new(histograms: &[(&str, &[f64])]) -> Arc<Self> {
        let mut builder = PrometheusBuilder::new();
        // Empty buckets (the only ones refused) make a summary instead.
        for (name, buckets) in histograms.iter().filter(|(_, b)| !b.is_empty()) {
            builder = builder
                .set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets)
                .expect("buckets are not empty");
        }
        let recorder = builder.build_recorder();
        let metrics = Arc::new(Self {
            handle: recorder.handle(),
            recorder,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&metrics);
            runtime.spawn(async move {
                let mut every = tokio::time::interval(UPKEEP_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    match weak.upgrade() {
                        Some(metrics) => metrics.handle.run_upkeep(),
                        None => break,
                    }
                }
            });
        }
        metrics
    }

    /// Describes `name` (its `# HELP` line).
    fn describe(&self, kind: Kind, name: &str, help: &'static str) {
        let (name, help) = (
            KeyName::from(name.to_owned()),
            SharedString::const_str(help),
        );
        match kind {
            Kind::Counter => self.recorder.describe_counter(name, None, help),
            Kind::Gauge => self.recorder.describe_gauge(name, None, help),
            Kind::Histogram => self.recorder.describe_histogram(name, None, help),
        }
    }

    /// The counter `name`, described by `help`.
    pub fn counter(&self, name: &str, help: &'static str) -> Counter {
        self.describe(Kind::Counter, name, help);
        self.labelled_counter(name, Vec::new())
    }

    /// The counter `name` with `labels`, described by `help` (one call per
    /// label set, each its own series).
    pub fn counter_with_labels(
        &self,
        name: &str,
        help: &'static str,
        labels: &[(&'static str, &'static str)],
    ) -> Counter {
        self.describe(Kind::Counter, name, help);
        let labels = labels
            .iter()
            .map(|(k, v)| Label::from_static_parts(k, v))
            .collect::<Vec<_>>();
        self.labelled_counter(name, labels)
    }

    /// The gauge `name`, described by `help`.
    pub fn gauge(&self, name: &str, help: &'static str) -> Gauge {
        self.describe(Kind::Gauge, name, help);
        self.recorder
            .register_gauge(&Key::from_name(name.to_owned()), &METADATA)
    }

    /// The gauge `name` with `labels`, described by `help` (one call per
    /// label set, each its own series).
    pub fn labelled_gauge(
        &self,
        name: &str,
        help: &'static str,
        labels: &[(&'static str, &'static str)],
    ) -> Gauge {
        self.describe(Kind::Gauge, name, help);
        let labels = labels
            .iter()
            .map(|(k, v)| Label::from_static_parts(k, v))
            .collect::<Vec<_>>();
        self.recorder
            .register_gauge(&Key::from_parts(name.to_owned(), labels), &METADATA)
    }

    /// The histogram `name`, described by `help`.
    pub fn histogram(&self, name: &str, help: &'static str) -> Histogram {
        self.describe(Kind::Histogram, name, help);
        self.labelled_histogram(name, Vec::new())
    }

    pub(crate) fn describe_counter(&self, name: &str, help: &'static str) {
        self.describe(Kind::Counter, name, help);
    }

    pub(crate) fn describe_histogram(&self, name: &str, help: &'static str) {
        self.describe(Kind::Histogram, name, help);
    }

    pub(crate) fn labelled_counter(&self, name: &str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name.to_owned(), labels), &METADATA)
    }

    pub(crate) fn labelled_histogram(&self, name: &str, labels: Vec<Label>) -> Histogram {
        self.recorder
            .register_histogram(&Key::from_parts(name.to_owned(), labels), &METADATA)
    }

    /// Everything recorded, as Prometheus text.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// The `/metrics` answer.
    pub fn exposition(&self) -> Response {
        ([(header::CONTENT_TYPE, TEXT_FORMAT)], self.render()).into_response()
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}
