//! Metric names (DESIGN.md §4) and handles resolved once per target.
//!
//! Metrics go through the `metrics` facade; the binary installs a recorder (a Prometheus
//! exporter) and libraries never do. Looking a labelled metric up in the recorder costs a
//! hash and a lock, so the request path never does it per request: [`HttpMetrics`] and
//! [`TcpMetrics`] resolve their handles when a target's stack is built, and a request costs
//! a few atomic adds.

use std::sync::Mutex;
use std::time::Duration;

use metrics::{Counter, Histogram, Label, SharedString, Unit};

use crate::classify::ResponseClass;

mod layer;

pub use self::layer::{RecordBody, RecordHttp, RecordHttpLayer, future};

/// `mesh_request_total{direction,dst}`: HTTP requests received.
pub const REQUEST_TOTAL: &str = "mesh_request_total";
/// `mesh_response_total{direction,dst,status_code,classification}`: HTTP responses sent,
/// counted when the response ends (a gRPC status in trailers decides its classification).
pub const RESPONSE_TOTAL: &str = "mesh_response_total";
/// `mesh_response_latency_seconds{direction,dst}`: time to the response head.
pub const RESPONSE_LATENCY_SECONDS: &str = "mesh_response_latency_seconds";
/// `mesh_tcp_open_total{direction,dst}`: connections accepted.
pub const TCP_OPEN_TOTAL: &str = "mesh_tcp_open_total";
/// `mesh_tcp_close_total{direction,dst}`: connections closed.
pub const TCP_CLOSE_TOTAL: &str = "mesh_tcp_close_total";
/// `mesh_tcp_read_bytes_total{direction,dst}`: bytes read from clients.
pub const TCP_READ_BYTES_TOTAL: &str = "mesh_tcp_read_bytes_total";
/// `mesh_tcp_write_bytes_total{direction,dst}`: bytes written to clients.
pub const TCP_WRITE_BYTES_TOTAL: &str = "mesh_tcp_write_bytes_total";
/// `mesh_detect_total{direction,protocol}`: protocol detection outcomes.
pub const DETECT_TOTAL: &str = "mesh_detect_total";
/// `mesh_authz_decisions_total{direction,port,rule,decision}`: inbound authorization
/// decisions, by the rule that made them (`decision` is `allow` or `deny`).
pub const AUTHZ_DECISIONS_TOTAL: &str = "mesh_authz_decisions_total";
/// `mesh_tls_handshake_errors_total{direction}`: mesh TLS handshakes that failed.
pub const TLS_HANDSHAKE_ERRORS_TOTAL: &str = "mesh_tls_handshake_errors_total";
/// `mesh_endpoints{direction,dst,state}`: a balanced destination's endpoints per state
/// (`ready`, `ejected`, `probing`, and `pending`: discovered, not yet taken in).
pub const ENDPOINTS: &str = "mesh_endpoints";
/// `mesh_resolver_updates_total{namer}`: endpoint sets a namer published.
pub const RESOLVER_UPDATES_TOTAL: &str = "mesh_resolver_updates_total";
/// `mesh_resolver_errors_total{namer}`: resolutions a namer failed (an invalid file, a
/// failed lookup), keeping the last good set.
pub const RESOLVER_ERRORS_TOTAL: &str = "mesh_resolver_errors_total";
/// `mesh_identity_cert_expiry_timestamp_seconds{identity}`: when the workload certificate
/// in force expires (Unix time).
pub const IDENTITY_CERT_EXPIRY: &str = "mesh_identity_cert_expiry_timestamp_seconds";

/// Latency histogram bucket bounds, in seconds: 1 ms to 30 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

/// Registers help text and units for every mesh metric with the installed recorder.
///
/// Call once from the binary after installing a recorder; Prometheus exposition then
/// carries `# HELP` lines, which `promtool check metrics` requires.
pub fn describe() {
    metrics::describe_counter!(REQUEST_TOTAL, "HTTP requests received by the proxy.");
    metrics::describe_counter!(
        RESPONSE_TOTAL,
        "HTTP responses sent by the proxy, by status and classification."
    );
    metrics::describe_histogram!(
        RESPONSE_LATENCY_SECONDS,
        Unit::Seconds,
        "Time from receiving a request to sending its response head."
    );
    metrics::describe_counter!(TCP_OPEN_TOTAL, "Client connections accepted.");
    metrics::describe_counter!(TCP_CLOSE_TOTAL, "Client connections closed.");
    metrics::describe_counter!(
        TCP_READ_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes read from clients."
    );
    metrics::describe_counter!(
        TCP_WRITE_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes written to clients."
    );
    metrics::describe_counter!(DETECT_TOTAL, "Protocol detection outcomes.");
    metrics::describe_counter!(
        AUTHZ_DECISIONS_TOTAL,
        "Inbound authorization decisions, by the rule that made them."
    );
    metrics::describe_counter!(
        TLS_HANDSHAKE_ERRORS_TOTAL,
        "Mesh TLS handshakes that failed."
    );
    metrics::describe_gauge!(ENDPOINTS, "A balanced destination's endpoints, by state.");
    metrics::describe_counter!(RESOLVER_UPDATES_TOTAL, "Endpoint sets a namer published.");
    metrics::describe_counter!(
        RESOLVER_ERRORS_TOTAL,
        "Resolutions a namer failed, keeping its last good set."
    );
    metrics::describe_counter!(crate::policy::RETRY_TOTAL, "Retries, by reason.");
    metrics::describe_counter!(
        crate::policy::RETRY_BUDGET_EXHAUSTED_TOTAL,
        "Retries refused because the retry budget was spent."
    );
    metrics::describe_counter!(crate::policy::FAULT_INJECTED_TOTAL, "Injected faults.");
    metrics::describe_gauge!(
        crate::policy::RETRY_REPLAY_BYTES,
        Unit::Bytes,
        "Bytes all retry replay buffers hold (bounded by limits.replay_memory)."
    );
    metrics::describe_gauge!(
        IDENTITY_CERT_EXPIRY,
        Unit::Seconds,
        "When the workload certificate in force expires, as a Unix timestamp."
    );
}

/// Counts a detection outcome.
pub fn record_detect(direction: &'static str, protocol: &'static str) {
    metrics::counter!(DETECT_TOTAL, "direction" => direction, "protocol" => protocol).increment(1);
}

/// The labels of one target's metrics: `direction`, `dst`, then any extra ones.
fn target_labels(
    direction: &'static str,
    dst: SharedString,
    extra: &[(&'static str, String)],
) -> Vec<Label> {
    let mut labels = vec![Label::new("direction", direction), Label::new("dst", dst)];
    labels.extend(extra.iter().map(|(k, v)| Label::new(*k, v.clone())));
    labels
}

/// Request and response metrics for one `(direction, dst)` (and, inbound, peer).
#[derive(Debug)]
pub struct HttpMetrics {
    labels: Vec<Label>,
    requests: Counter,
    latency: Histogram,
    responses: Mutex<Vec<(u16, ResponseClass, Counter)>>,
}

impl HttpMetrics {
    /// Resolves the handles for `direction` and `dst`.
    pub fn new(direction: &'static str, dst: impl Into<SharedString>) -> Self {
        Self::with_labels(direction, dst, &[])
    }

    /// Resolves the handles for `direction`, `dst` and `extra` labels (inbound: `tls` and
    /// `peer_id`).
    pub fn with_labels(
        direction: &'static str,
        dst: impl Into<SharedString>,
        extra: &[(&'static str, String)],
    ) -> Self {
        let labels = target_labels(direction, dst.into(), extra);
        Self {
            requests: metrics::counter!(REQUEST_TOTAL, labels.iter()),
            latency: metrics::histogram!(RESPONSE_LATENCY_SECONDS, labels.iter()),
            labels,
            responses: Mutex::new(Vec::new()),
        }
    }

    /// Counts a request.
    pub fn request(&self) {
        self.requests.increment(1);
    }

    /// Records the time from a request to its response head.
    pub fn latency(&self, latency: Duration) {
        self.latency.record(latency.as_secs_f64());
    }

    /// Counts a finished response with its status and outcome.
    pub fn response(&self, status: http::StatusCode, class: ResponseClass) {
        // Standard codes keep their value; anything an upstream invents past 599 is "other".
        let code = status.as_u16().min(600);
        let mut responses = self.responses.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, c)) = responses.iter().find(|(s, k, _)| *s == code && *k == class) {
            c.increment(1);
            return;
        }
        // Bounded: at most 501 status labels and two classes per (direction, dst).
        let label = if code < 600 {
            code.to_string()
        } else {
            "other".to_owned()
        };
        let mut labels = self.labels.clone();
        labels.push(Label::new("status_code", label));
        labels.push(Label::new("classification", class.label()));
        let c = metrics::counter!(RESPONSE_TOTAL, labels);
        c.increment(1);
        responses.push((code, class, c));
    }
}

/// Connection metrics for one `(direction, dst)`.
#[derive(Debug)]
pub struct TcpMetrics {
    open: Counter,
    close: Counter,
    read: Counter,
    write: Counter,
}

impl TcpMetrics {
    /// Resolves the handles for `direction` and `dst`.
    pub fn new(direction: &'static str, dst: impl Into<SharedString>) -> Self {
        Self::with_labels(direction, dst, &[])
    }

    /// Resolves the handles for `direction`, `dst` and `extra` labels.
    pub fn with_labels(
        direction: &'static str,
        dst: impl Into<SharedString>,
        extra: &[(&'static str, String)],
    ) -> Self {
        let labels = target_labels(direction, dst.into(), extra);
        Self {
            open: metrics::counter!(TCP_OPEN_TOTAL, labels.iter()),
            close: metrics::counter!(TCP_CLOSE_TOTAL, labels.iter()),
            read: metrics::counter!(TCP_READ_BYTES_TOTAL, labels.iter()),
            write: metrics::counter!(TCP_WRITE_BYTES_TOTAL, labels.iter()),
        }
    }

    /// Counts an accepted connection.
    pub fn opened(&self) {
        self.open.increment(1);
    }

    /// Counts a closed connection and the bytes it carried from and to the client.
    pub fn closed(&self, read: u64, written: u64) {
        self.close.increment(1);
        self.transferred(read, written);
    }

    /// Counts bytes carried from and to the client outside the connection's own accounting
    /// (an upgraded tunnel that outlives its HTTP connection).
    pub fn transferred(&self, read: u64, written: u64) {
        self.read.increment(read);
        self.write.increment(written);
    }
}
