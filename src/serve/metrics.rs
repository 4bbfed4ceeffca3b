//! What `/metrics` says, in the Prometheus text format: requests by endpoint and status, a
//! latency histogram by endpoint, the model being served and the reloads. Counters are atomics:
//! recording a request takes no lock.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::loaded::Loaded;

/// The endpoints, as the `endpoint` label names them.
pub const ENDPOINTS: [&str; 10] = [
    "recommend_user",
    "recommend_items",
    "similar",
    "predict",
    "history",
    "healthz",
    "livez",
    "metrics",
    "page",
    "other",
];
/// The statuses counted one by one; any other is counted as "other".
const STATUSES: [u16; 9] = [200, 400, 401, 404, 405, 413, 500, 503, 0];
/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

#[derive(Default)]
pub struct Metrics {
    requests: [[AtomicU64; STATUSES.len()]; ENDPOINTS.len()],
    latency: [Histogram; ENDPOINTS.len()],
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// Scoring calls, and the asks they answered (`batch::Batcher`).
    batches: AtomicU64,
    batched: AtomicU64,
    /// The last failed reload: unix seconds and the message.
    last_failure: Mutex<Option<(f64, String)>>,
}

impl Metrics {
    /// One answered request: its endpoint (an index of `ENDPOINTS`), status and duration.
    pub fn record(&self, endpoint: usize, status: u16, seconds: f64) {
        let code = STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(STATUSES.len() - 1);
        self.requests[endpoint][code].fetch_add(1, Ordering::Relaxed);
        let h = &self.latency[endpoint];
        if let Some(b) = BUCKETS.iter().position(|&le| seconds <= le) {
            h.buckets[b].fetch_add(1, Ordering::Relaxed);
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_nanos
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    /// One scoring call that answered `asks` requests.
    pub fn scored(&self, asks: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batched.fetch_add(asks as u64, Ordering::Relaxed);
    }

    /// Scoring calls so far, and the asks they answered.
    pub fn batches(&self) -> (u64, u64) {
        (
            self.batches.load(Ordering::Relaxed),
            self.batched.load(Ordering::Relaxed),
        )
    }

    pub fn reloaded(&self) {
        self.reloads_ok.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reload_failed(&self, at: f64, message: String) {
        self.reloads_failed.fetch_add(1, Ordering::Relaxed);
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some((at, message));
    }

    /// The text `/metrics` answers, with `model` the one being served (if any).
    pub fn render(&self, model: Option<&Loaded>) -> String {
        let mut out = String::with_capacity(16 * 1024);
        self.render_requests(&mut out);
        self.render_latency(&mut out);
        self.render_scoring(&mut out);
        let ok = self.reloads_ok.load(Ordering::Relaxed);
        let failed = self.reloads_failed.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP funksvd_reloads_total Models loaded (ok) and refused (failed: unreadable, invalid, or storage down).\n\
             # TYPE funksvd_reloads_total counter\n\
             funksvd_reloads_total{{result=\"ok\"}} {ok}\nfunksvd_reloads_total{{result=\"failed\"}} {failed}"
        );
        if let Some((at, _)) = &*self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) {
            line(
                &mut out,
                "funksvd_reload_last_failure_timestamp_seconds",
                "When a reload last failed (the message is in the log).",
                "gauge",
                format!("{at:.3}"),
            );
        }
        let ready = u8::from(model.is_some());
        line(
            &mut out,
            "funksvd_model_ready",
            "1 once a model is being served.",
            "gauge",
            ready.to_string(),
        );
        if let Some(m) = model {
            let _ = writeln!(
                out,
                "# HELP funksvd_model_info The model being served.\n# TYPE funksvd_model_info gauge\n\
                 funksvd_model_info{{version=\"{}\",objective=\"{}\",factors=\"{}\"}} 1",
                escape(&m.version),
                m.model.meta.hyperparameters.objective.name(),
                m.model.meta.factors
            );
            line(
                &mut out,
                "funksvd_model_loaded_timestamp_seconds",
                "When the model being served was loaded.",
                "gauge",
                format!("{:.3}", m.loaded_at),
            );
            line(
                &mut out,
                "funksvd_model_load_seconds",
                "How long loading it (and --data) took.",
                "gauge",
                format!("{:.3}", m.load_seconds),
            );
            line(
                &mut out,
                "funksvd_model_users",
                "Users of the model.",
                "gauge",
                m.model.user_ids.len().to_string(),
            );
            line(
                &mut out,
                "funksvd_model_items",
                "Items of the model.",
                "gauge",
                m.model.item_ids.len().to_string(),
            );
        }
        out
    }

    fn render_requests(&self, out: &mut String) {
        out.push_str("# HELP funksvd_requests_total Requests answered, by endpoint and status.\n");
        out.push_str("# TYPE funksvd_requests_total counter\n");
        for (e, name) in ENDPOINTS.iter().enumerate() {
            for (s, status) in STATUSES.iter().enumerate() {
                let n = self.requests[e][s].load(Ordering::Relaxed);
                if n > 0 {
                    let code = match status {
                        0 => "other".to_string(),
                        c => c.to_string(),
                    };
                    let _ = writeln!(
                        out,
                        "funksvd_requests_total{{endpoint=\"{name}\",status=\"{code}\"}} {n}"
                    );
                }
            }
        }
    }

    fn render_scoring(&self, out: &mut String) {
        let (batches, asks) = self.batches();
        line(
            out,
            "funksvd_scoring_batches_total",
            "Scoring calls (requests ready together are scored in one).",
            "counter",
            batches.to_string(),
        );
        line(
            out,
            "funksvd_scoring_requests_total",
            "Recommend and similar requests scored (over batches: the mean batch).",
            "counter",
            asks.to_string(),
        );
    }

    fn render_latency(&self, out: &mut String) {
        out.push_str("# HELP funksvd_request_seconds Time to answer a request, by endpoint.\n");
        out.push_str("# TYPE funksvd_request_seconds histogram\n");
        for (e, name) in ENDPOINTS.iter().enumerate() {
            let h = &self.latency[e];
            let count = h.count.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (b, le) in BUCKETS.iter().enumerate() {
                cumulative += h.buckets[b].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "funksvd_request_seconds_bucket{{endpoint=\"{name}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(
                out,
                "funksvd_request_seconds_bucket{{endpoint=\"{name}\",le=\"+Inf\"}} {count}\n\
                 funksvd_request_seconds_sum{{endpoint=\"{name}\"}} {sum:.6}\n\
                 funksvd_request_seconds_count{{endpoint=\"{name}\"}} {count}"
            );
        }
    }
}

/// One unlabelled metric: its help, its type and its value.
fn line(out: &mut String, name: &str, help: &str, kind: &str, value: String) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// A label value as the text format quotes it.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
