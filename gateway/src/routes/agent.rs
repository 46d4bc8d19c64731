//! The routes the client agent (`satchel agent`) uses, with a device
//! certificate:
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/agent/bundle` | the signed policy bundle devices enforce (`404` if none is stored) |
//! | `POST /v1/agent/spool` | audit entries the device spooled while offline |
//!
//! And for admins: `GET /v1/admin/bundle`, `PUT /v1/admin/bundle` (a signed
//! bundle; the gateway relays it and refuses one older than the one it
//! holds, and each device checks the signature with its bundle key).
//!
//! ## Exactly-once spool delivery
//!
//! A device's spool file has an epoch (a random id made with the file) and
//! numbers its entries 1, 2, 3, ... in order. The gateway keeps a mark per
//! (device, epoch): the highest number in the audit trail. A delivery is
//! `{"epoch", "entries": [{"seq", "at_ms", "kind", "subject", "decision",
//! "details"}]}`; entries at or below the mark are skipped (already there),
//! the rest should continue the numbering (a gap, which means the gateway
//! lost entries, is recorded as an `agent.spool-gap` entry and accepted), and are appended in
//! one audit transaction as kind `agent.KIND`, actor `device:ID` (from the
//! certificate, never from the body), with `details.spool = {epoch, seq,
//! at_ms}`. The answer is `{"accepted_through": N}`.
//!
//! Crash safety: before appending, the mark records `pending_through` and
//! the audit position the append starts at; after, the mark moves. A crash in
//! between leaves `pending_through` set, and the next delivery for that spool
//! reads the audit entries from that position to learn which landed. One
//! delivery at a time (a lock), so two resends cannot both append.

use serde_json::{json, Value};

use crate::app::AppState;
use crate::reply::{bad, internal, ok, refuse, Reply};
use crate::state::{Device, SpoolMark};
use protocol::admin::BundlePut;
use protocol::agent::{Delivered, Delivery, Spooled};
use protocol::paths;

/// The setting the relayed bundle is stored under.
pub const BUNDLE_SETTING: &str = "policy-bundle";
/// Most entries in one delivery.
pub use protocol::limits::MAX_SPOOL_BATCH;
/// Most audit entries read to learn what a crashed append left.
const MAX_RECOVERY_SCAN: u64 = 1_000_000;

/// Serve `/v1/agent/*` for an authorized device.
pub async fn route(
    state: &AppState,
    dev: &Device,
    method: &hyper::Method,
    path: &str,
    body: &[u8],
) -> Reply {
    use hyper::Method as M;
    match (method, path) {
        (&M::GET, paths::AGENT_BUNDLE) => get_bundle(state).await,
        (&M::POST, paths::AGENT_SPOOL) => deliver(state, dev, body).await,
        (_, paths::AGENT_BUNDLE) => crate::routes::not_allowed("use GET"),
        (_, paths::AGENT_SPOOL) => crate::routes::not_allowed("use POST"),
        _ => refuse(404, "not found", "no such agent route", Value::Null),
    }
}

/// `GET /v1/agent/bundle` and `GET /v1/admin/bundle`: the stored bundle.
pub async fn get_bundle(state: &AppState) -> Reply {
    match state.db.setting(BUNDLE_SETTING).await {
        Ok(Some(b)) => Reply::Text(b),
        Ok(None) => refuse(
            404,
            "no bundle",
            "the gateway holds no policy bundle (PUT /v1/admin/bundle)",
            Value::Null,
        ),
        Err(e) => internal(&e),
    }
}

/// `PUT /v1/admin/bundle`: store a newer signed bundle for devices.
pub async fn put_bundle(state: &AppState, admin: &str, body: &[u8]) -> Reply {
    let version = match policy::bundle::Bundle::claimed_version(body) {
        Ok(v) => v,
        Err(e) => return bad(e.to_string()),
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return bad("the bundle is not UTF-8");
    };
    let held = match state.db.setting(BUNDLE_SETTING).await {
        Ok(b) => b.and_then(|b| policy::bundle::Bundle::claimed_version(b.as_bytes()).ok()),
        Err(e) => return internal(&e),
    };
    if let Some(held) = held {
        if version < held {
            state
                .record(
                    "admin",
                    admin,
                    "bundle",
                    "refused",
                    json!({"version": version, "held": held, "reason": "older than the bundle held"}),
                )
                .await;
            return refuse(
                409,
                "older bundle",
                format!("bundle version {version} is older than version {held}, which the gateway holds"),
                Value::Null,
            );
        }
    }
    if let Err(e) = state.db.set_setting(BUNDLE_SETTING, text).await {
        return internal(&e);
    }
    state
        .record(
            "admin",
            admin,
            "bundle",
            "replaced",
            json!({"version": version}),
        )
        .await;
    ok(BundlePut { version })
}

fn valid_word(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `POST /v1/agent/spool`.
async fn deliver(state: &AppState, dev: &Device, body: &[u8]) -> Reply {
    let d: Delivery = match serde_json::from_slice(body) {
        Ok(d) => d,
        Err(e) => return bad(format!("not a spool delivery: {e}")),
    };
    if let Err(reply) = check_delivery(&d) {
        return reply;
    }
    let s = Spool {
        state,
        device_id: &dev.device_id,
        epoch: &d.epoch,
        actor: format!("device:{}", dev.device_id),
    };
    let _one_at_a_time = state.spool_lock.lock().await;
    match s.deliver(d.entries).await {
        Ok(done) => ok(done),
        Err(e) => internal(&e),
    }
}

/// A delivery's form: a word for an epoch, at most [`MAX_SPOOL_BATCH`]
/// entries, each kind a word, numbered in order without gaps.
fn check_delivery(d: &Delivery) -> Result<(), Reply> {
    if !valid_word(&d.epoch, 64) {
        return Err(bad("the epoch must be 1-64 letters, digits, - or _"));
    }
    if d.entries.len() > MAX_SPOOL_BATCH {
        return Err(bad(format!(
            "{} entries; at most {MAX_SPOOL_BATCH} per delivery",
            d.entries.len()
        )));
    }
    if let Some(e) = d.entries.iter().find(|e| !valid_word(&e.kind, 32)) {
        return Err(bad(format!(
            "entry {}: kind {:?} is not a word",
            e.seq, e.kind
        )));
    }
    if d.entries
        .windows(2)
        .any(|w| w[0].seq.checked_add(1) != Some(w[1].seq))
    {
        return Err(bad("entries must be in order, numbered without gaps"));
    }
    Ok(())
}

/// One device's spool epoch, as the gateway keeps its mark.
struct Spool<'a> {
    state: &'a AppState,
    device_id: &'a str,
    epoch: &'a str,
    actor: String,
}

/// Why a delivery could not be taken (the gateway's side).
#[derive(Debug, thiserror::Error)]
enum SpoolError {
    #[error(transparent)]
    Db(#[from] crate::state::DbError),
    #[error(transparent)]
    Audit(#[from] audit::store::StoreError),
}

impl Spool<'_> {
    /// Append the entries the gateway does not hold yet, exactly once: the
    /// mark says "pending" while the append runs, so a crash between the
    /// two is repaired by the next delivery.
    async fn deliver(&self, entries: Vec<Spooled>) -> Result<Delivered, SpoolError> {
        let mark = self.recovered_mark().await?;
        let fresh: Vec<Spooled> = entries
            .into_iter()
            .filter(|e| e.seq > mark.last_seq)
            .collect();
        let (Some(first), Some(last)) = (fresh.first(), fresh.last()) else {
            return Ok(Delivered {
                accepted_through: mark.last_seq,
                appended: 0,
            });
        };
        // Entries the gateway should hold but does not: the device deletes
        // an entry only after the gateway acknowledged it, so this means the
        // gateway lost them (a database restored from an old backup).
        // Recorded as a gap, then accepted, so the device's spool does not
        // stall.
        let gap = (first.seq > mark.last_seq.saturating_add(1))
            .then(|| (mark.last_seq.saturating_add(1), first.seq - 1));
        let through = last.seq;
        let audit_from = self
            .state
            .audit
            .seq_bounds()
            .await?
            .map_or(0, |(_, hi)| hi + 1);
        self.set_mark(mark.last_seq, Some(through), Some(audit_from))
            .await?;
        let n = fresh.len();
        let batch: Vec<_> = gap
            .map(|g| self.gap_entry(g))
            .into_iter()
            .chain(fresh.into_iter().map(|e| self.entry(e)))
            .collect();
        self.state
            .audit
            .append(batch, audit::batch::now_ms())
            .await?;
        // Should this fail, the entries are in; the pending mark lets the
        // next delivery see it.
        self.set_mark(through, None, None).await?;
        Ok(Delivered {
            accepted_through: through,
            appended: n as u64,
        })
    }

    /// The mark, after a crash between append and mark is repaired: the
    /// entries that landed are found in the trail. The crashed append was
    /// the last thing this device's delivery did; what follows it in the
    /// trail is bounded by the gateway's traffic since, so a generous
    /// limit covers it.
    async fn recovered_mark(&self) -> Result<SpoolMark, SpoolError> {
        let mark = self.state.db.spool_mark(self.device_id, self.epoch).await?;
        let (Some(through), Some(from)) = (mark.pending_through, mark.audit_from) else {
            return Ok(mark);
        };
        let from = u64::try_from(from).unwrap_or(0);
        let list = self
            .state
            .audit
            .entries(from, None, Some(MAX_RECOVERY_SCAN))
            .await?;
        let landed = list
            .iter()
            .map(|e| &e.entry)
            .filter(|e| e.actor == self.actor && e.details["spool"]["epoch"] == self.epoch)
            .filter_map(|e| e.details["spool"]["seq"].as_i64())
            .filter(|s| *s <= through)
            .max();
        let last_seq = landed.unwrap_or(mark.last_seq).max(mark.last_seq);
        self.set_mark(last_seq, None, None).await?;
        Ok(SpoolMark {
            last_seq,
            pending_through: None,
            audit_from: None,
        })
    }

    async fn set_mark(
        &self,
        last_seq: i64,
        pending_through: Option<i64>,
        audit_from: Option<i64>,
    ) -> Result<(), SpoolError> {
        let mark = SpoolMark {
            last_seq,
            pending_through,
            audit_from,
        };
        Ok(self
            .state
            .db
            .set_spool_mark(self.device_id, self.epoch, mark)
            .await?)
    }

    /// The audit entry recording entries the gateway should hold but lacks.
    fn gap_entry(&self, (from, to): (i64, i64)) -> audit::entry::NewEntry {
        audit::entry::NewEntry {
            kind: "agent.spool-gap".to_owned(),
            actor: self.actor.clone(),
            subject: "spool".to_owned(),
            decision: "missing".to_owned(),
            details: json!({"epoch": self.epoch, "from_seq": from, "to_seq": to,
                "reason": "the gateway lacks entries the device was told it had (a restored database?)"}),
        }
    }

    /// A spooled entry as the gateway's audit entry (`agent.KIND`, its
    /// spool position in the details).
    fn entry(&self, e: Spooled) -> audit::entry::NewEntry {
        let mut details = match e.details {
            Value::Object(m) => m,
            Value::Null => serde_json::Map::new(),
            other => [("value".to_owned(), other)].into_iter().collect(),
        };
        details.insert(
            "spool".to_owned(),
            json!({"epoch": self.epoch, "seq": e.seq, "at_ms": e.at_ms}),
        );
        audit::entry::NewEntry {
            kind: format!("agent.{}", e.kind),
            actor: self.actor.clone(),
            subject: e.subject,
            decision: e.decision,
            details: Value::Object(details),
        }
    }
}
