//! The trail's counters: records written, write failures, fsyncs and their latency, alerts,
//! and whether the trail is failing right now. Lock-free; read by `/metrics` (through
//! [`AuditStats::render`]) and by `/readyz` (through [`AuditStats::is_failing`]).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the fsync latency buckets, in seconds.
pub const FSYNC_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Shared by the writer thread (which counts) and the handles (which read).
#[derive(Debug, Default)]
pub struct AuditStats {
    records_written: AtomicU64,
    write_failures: AtomicU64,
    alerts: AtomicU64,
    batches: AtomicU64,
    probes: AtomicU64,
    fsync_buckets: [AtomicU64; FSYNC_BUCKETS.len()],
    fsync_count: AtomicU64,
    fsync_sum_micros: AtomicU64,
    failing: AtomicBool,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsSnapshot {
    pub records_written: u64,
    /// Records that could not be written (each one's caller got an error).
    pub write_failures: u64,
    /// Records written with `alert: true`.
    pub alerts: u64,
    /// Write batches that reached the file (group commit: one write per batch).
    pub batches: u64,
    /// Idle probes made while failing.
    pub probes: u64,
    /// `fdatasync` calls (0 with `fsync = "never"`).
    pub fsyncs: u64,
    /// Cumulative counts per bucket of [`FSYNC_BUCKETS`], then `+Inf` (= `fsyncs`).
    pub fsync_cumulative: Vec<u64>,
    pub fsync_sum_seconds: f64,
    pub failing: bool,
}

impl AuditStats {
    pub(super) fn written(&self, records: u64, alerts: u64) {
        self.records_written.fetch_add(records, Ordering::Relaxed);
        self.alerts.fetch_add(alerts, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn failed(&self, records: u64) {
        self.write_failures.fetch_add(records, Ordering::Relaxed);
    }

    pub(super) fn probed(&self) {
        self.probes.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn fsync(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = FSYNC_BUCKETS.iter().position(|b| secs <= *b) {
            self.fsync_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.fsync_count.fetch_add(1, Ordering::Relaxed);
        self.fsync_sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Sets the failure state; returns the previous one (so the writer logs transitions only).
    pub(super) fn set_failing(&self, failing: bool) -> bool {
        self.failing.swap(failing, Ordering::SeqCst)
    }

    /// Whether the last write attempt failed: `/readyz` answers 503 while this holds. It
    /// clears by itself when a later write succeeds.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::SeqCst)
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let mut cum = 0;
        let mut fsync_cumulative: Vec<u64> = self
            .fsync_buckets
            .iter()
            .map(|b| {
                cum += b.load(Ordering::Relaxed);
                cum
            })
            .collect();
        let fsyncs = self.fsync_count.load(Ordering::Relaxed);
        fsync_cumulative.push(fsyncs);
        StatsSnapshot {
            records_written: self.records_written.load(Ordering::Relaxed),
            write_failures: self.write_failures.load(Ordering::Relaxed),
            alerts: self.alerts.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            probes: self.probes.load(Ordering::Relaxed),
            fsyncs,
            fsync_cumulative,
            fsync_sum_seconds: self.fsync_sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            failing: self.is_failing(),
        }
    }

    /// Appends the trail's metrics in the Prometheus text format (version 0.0.4):
    /// `rcshim_audit_records_written_total`, `rcshim_audit_write_failures_total`,
    /// `rcshim_audit_alerts_total`, `rcshim_audit_batches_total`,
    /// `rcshim_audit_fsync_duration_seconds` (histogram) and `rcshim_audit_failing` (0 or 1).
    pub fn render(&self, out: &mut String) {
        let s = self.snapshot();
        let counters = [
            (
                "rcshim_audit_records_written_total",
                "Audit records written to the trail.",
                s.records_written,
            ),
            (
                "rcshim_audit_write_failures_total",
                "Audit records that could not be written.",
                s.write_failures,
            ),
            (
                "rcshim_audit_alerts_total",
                "Requests that crossed policy.max_rooms_per_actor.",
                s.alerts,
            ),
            (
                "rcshim_audit_batches_total",
                "Write batches (group commits) of the audit trail.",
                s.batches,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let name = "rcshim_audit_fsync_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} fdatasync latency of the audit trail.\n# TYPE {name} histogram"
        );
        for (b, c) in FSYNC_BUCKETS.iter().zip(&s.fsync_cumulative) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", s.fsyncs);
        let _ = writeln!(out, "{name}_sum {}", s.fsync_sum_seconds);
        let _ = writeln!(out, "{name}_count {}", s.fsyncs);
        let _ = writeln!(
            out,
            "# HELP rcshim_audit_failing 1 while the audit trail cannot be written.\n# TYPE rcshim_audit_failing gauge\nrcshim_audit_failing {}",
            u8::from(s.failing)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let s = AuditStats::default();
        s.written(3, 1);
        s.failed(2);
        s.fsync(Duration::from_micros(300));
        s.fsync(Duration::from_millis(2));
        s.fsync(Duration::from_secs(10));
        assert!(!s.set_failing(true));
        let mut out = String::new();
        s.render(&mut out);
        assert!(
            out.contains("\nrcshim_audit_records_written_total 3\n"),
            "{out}"
        );
        assert!(
            out.contains("\nrcshim_audit_write_failures_total 2\n"),
            "{out}"
        );
        assert!(out.contains("\nrcshim_audit_alerts_total 1\n"), "{out}");
        assert!(
            out.contains("rcshim_audit_fsync_duration_seconds_bucket{le=\"0.0005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("rcshim_audit_fsync_duration_seconds_bucket{le=\"0.0025\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("rcshim_audit_fsync_duration_seconds_bucket{le=\"2.5\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("rcshim_audit_fsync_duration_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("rcshim_audit_fsync_duration_seconds_count 3\n"),
            "{out}"
        );
        assert!(out.ends_with("rcshim_audit_failing 1\n"), "{out}");
    }
}
