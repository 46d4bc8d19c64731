//! Prometheus metrics, served to admins at `GET /v1/admin/metrics`
//! (OpenMetrics text; scrape it with the admin certificate).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `satchel_audit_entries_total` | counter | `kind`, `decision`: every audited decision (attestations by verdict, enrollments, proxy decisions, admin actions, ...) |
//! | `satchel_audit_append_seconds` | histogram | how long one audited decision waited for its entry to be durable |
//! | `satchel_audit_checkpoint_age_seconds` | gauge | since the signer last found the log covered by a signed checkpoint (grows while an alarm lasts) |
//! | `satchel_audit_alarm` | gauge | 1 while the signer refuses to sign |
//! | `satchel_tls_handshakes_total` | counter | `listener` (`api`, `proxy`), `result` (`ok`, `failed`, `timeout`) |
//! | `satchel_sync_bytes_total` | counter | `direction` (`in`: bodies devices sent; `out`: answers to them) |
//! | `satchel_proxy_open_tunnels` | gauge | tunnels and intercepted connections open now |

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    audit_entries: Family<Labels, Counter>,
    audit_append: Histogram,
    checkpoint_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    alarm: Gauge,
    handshakes: Family<Labels, Counter>,
    sync_bytes: Family<Labels, Counter>,
    open_tunnels: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("satchel");
        let audit_entries = Family::<Labels, Counter>::default();
        registry.register(
            "audit_entries",
            "Audited decisions, by kind and decision",
            audit_entries.clone(),
        );
        // 0.5 ms to about 2 s.
        let audit_append = Histogram::new(exponential_buckets(0.0005, 2.0, 13));
        registry.register(
            "audit_append_seconds",
            "Time for one audited decision's entry to be durable",
            audit_append.clone(),
        );
        let checkpoint_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "audit_checkpoint_age_seconds",
            "Seconds since the log was last found covered by a signed checkpoint",
            checkpoint_age.clone(),
        );
        let alarm = Gauge::default();
        registry.register(
            "audit_alarm",
            "1 while the audit signer refuses to sign",
            alarm.clone(),
        );
        let handshakes = Family::<Labels, Counter>::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes, by listener and result",
            handshakes.clone(),
        );
        let sync_bytes = Family::<Labels, Counter>::default();
        registry.register(
            "sync_bytes",
            "Bytes of sync requests (in) and answers (out)",
            sync_bytes.clone(),
        );
        let open_tunnels = Gauge::default();
        registry.register(
            "proxy_open_tunnels",
            "Proxy tunnels and intercepted connections open now",
            open_tunnels.clone(),
        );
        Metrics {
            registry,
            audit_entries,
            audit_append,
            checkpoint_age,
            alarm,
            handshakes,
            sync_bytes,
            open_tunnels,
        }
    }
}

impl Metrics {
    /// One audited decision, and how long its append took.
    pub fn audited(&self, kind: &str, decision: &str, took: std::time::Duration) {
        self.audit_entries
            .get_or_create(&vec![
                ("kind", kind.to_owned()),
                ("decision", decision.to_owned()),
            ])
            .inc();
        self.audit_append.observe(took.as_secs_f64());
    }

    /// One TLS handshake on `listener` (`api`, `proxy`) with `result`.
    pub fn handshake(&self, listener: &str, result: &str) {
        self.handshakes
            .get_or_create(&vec![
                ("listener", listener.to_owned()),
                ("result", result.to_owned()),
            ])
            .inc();
    }

    /// Sync bytes in one `direction` (`in`, `out`).
    pub fn sync_bytes(&self, direction: &str, n: usize) {
        self.sync_bytes
            .get_or_create(&vec![("direction", direction.to_owned())])
            .inc_by(n as u64);
    }

    /// The text Prometheus scrapes, with the gauges read now.
    pub fn encode(&self, open_tunnels: usize, audit: &audit::signer::SignerView) -> String {
        self.open_tunnels
            .set(i64::try_from(open_tunnels).unwrap_or(i64::MAX));
        let checked = audit.checked_at_ms();
        let age = if checked > 0 {
            (audit::batch::now_ms() - checked).max(0) as f64 / 1000.0
        } else {
            0.0
        };
        self.checkpoint_age.set(age);
        self.alarm.set(i64::from(audit.alarm().is_some()));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding the metrics failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_asks_only_for_metrics_the_gateway_serves() {
        let dash: serde_json::Value =
            serde_json::from_str(include_str!("../../packaging/grafana-satchel-gateway.json"))
                .expect("the dashboard is JSON");
        let m = Metrics::default();
        m.audited("proxy", "allow", std::time::Duration::from_millis(1));
        m.handshake("api", "ok");
        m.sync_bytes("in", 1);
        let served = m.encode(0, &audit::signer::SignerView::default());
        let names: Vec<&str> = served
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let mut asked = 0;
        for p in dash["panels"].as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap_or_default();
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if word.starts_with("satchel_") {
                        asked += 1;
                        assert!(
                            names.contains(&word),
                            "the dashboard asks for {word}: {served}"
                        );
                    }
                }
            }
        }
        assert!(asked >= 9);
    }
}
