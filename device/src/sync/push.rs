//! Pushing: check in each layer's local changes against the last common
//! version (new chunks of user layers uploaded first), then apply what the
//! gateway made of them.

use std::collections::BTreeSet;
use std::path::Path;

use sync::manifest::{Entry, Kind, Layer, Signed};
use sync::{ChunkId, ChunkStore};

use crate::client::{ClientError, GatewayClient, Meter};
use protocol::paths::{self, SyncAction};
use protocol::sync::{CheckIn, CheckedIn, Ids, Missing};

use super::local::pinned_key;
use super::offer::{json_call, refused};
use super::pull::{pull_layers, LayerFilter, Target};
use super::state::{state_path, PushReport, SyncState};
use super::{local, SyncError};

/// Check in the client's changes to `root` since the last common version
/// of each layer, then apply what the gateway made of them.
pub async fn push(t: &Target<'_>, layers: LayerFilter<'_>) -> Result<PushReport, SyncError> {
    let (c, cdir, image, meter) = (t.client, t.cdir, t.image, t.meter);
    let root = t.root;
    let store = ChunkStore::open_packed(cdir.join("chunks")).map_err(local)?;
    let mut report = PushReport::default();
    let mut changed_user_layers = Vec::new();
    for p in pending(cdir, image, root, layers, &store)? {
        let (layer, entries) = (&p.layer, p.entries);
        let checkin = CheckIn {
            layer: *layer,
            base_digest: Some(p.base_digest),
            entries,
        };
        // A gateway that stops mid-push: the layer is pushed again, to the
        // next gateway when the client has several; the upload asks which
        // chunks are missing first, so what had arrived is not sent again.
        let mut tries = 0;
        let v: CheckedIn = loop {
            let mut sent = 0;
            let attempt = async {
                if !layer.is_system() {
                    sent = upload(c, image, &store, &p.new_chunks, meter).await?;
                }
                json_call(c, image, SyncAction::Checkin, &checkin, meter).await
            }
            .await;
            report.chunks_sent += sent;
            match attempt {
                Ok(v) => break v,
                Err(SyncError::Client(e @ ClientError::Io { .. }))
                    if tries < super::fetch::BATCH_RETRIES =>
                {
                    tries += 1;
                    tracing::warn!(error = %e, try_ = tries, "pushing {layer} failed; pushing it again");
                }
                Err(e) => return Err(e),
            }
        };
        let entries = checkin.entries;
        report.layers.insert(layer.to_string(), v.version);
        if !v.conflicts.is_empty() {
            report.conflicts.insert(layer.to_string(), v.conflicts);
        }
        if !v.violations.is_empty() {
            report.violations.insert(layer.to_string(), v.violations);
        }
        if !v.stripped.is_empty() {
            report.stripped.insert(layer.to_string(), v.stripped);
        }
        if !layer.is_system() {
            changed_user_layers.push((*layer, entries));
        }
    }
    // Apply what the gateway made of the check-ins (conflict copies
    // included), so client and gateway share the new version.
    if !changed_user_layers.is_empty() {
        let only: Vec<Layer> = changed_user_layers.iter().map(|(l, _)| *l).collect();
        let pulled = pull_layers(t, Some(&only), &changed_user_layers).await?;
        report.layers_kept = pulled.layers_kept;
    }
    report.bytes_received = meter.bytes_received();
    report.bytes_sent = meter.bytes_sent();
    report.seconds = (meter.seconds() * 1000.0).round() / 1000.0;
    Ok(report)
}

/// One layer changed since the last common version.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The layer.
    pub layer: Layer,
    /// The last common version's digest.
    pub base_digest: String,
    /// The tree now.
    pub entries: Vec<Entry>,
    /// Chunks of the tree the base did not have (user layers only; a
    /// system layer's are never sent).
    pub new_chunks: Vec<ChunkId>,
}

pub(super) fn file_chunks(entries: &[Entry]) -> impl Iterator<Item = ChunkId> + '_ {
    entries
        .iter()
        .filter_map(|e| match &e.kind {
            Kind::File { chunks, .. } => Some(chunks.iter().copied()),
            _ => None,
        })
        .flatten()
}

/// The layers of `root` changed since the last common version. User
/// layers are scanned into `store` (their new chunks are to be sent);
/// system layers are only hashed.
pub fn pending(
    cdir: &Path,
    image: &str,
    root: &Path,
    layers: LayerFilter<'_>,
    store: &ChunkStore,
) -> Result<Vec<Pending>, SyncError> {
    let state = SyncState::load(&state_path(cdir, image))?;
    let key = pinned_key(&state, image)?;
    let mut out = Vec::new();
    for (layer, base) in &state.layers {
        if layers.is_some_and(|f| !f.contains(layer)) {
            continue;
        }
        let dir = root.join(layer.as_str());
        if !dir.exists() {
            continue;
        }
        let base_entries = Signed::verify(&base.manifest, &key)
            .map_err(local)?
            .manifest
            .entries;
        let (entries, _) = if layer.is_system() {
            sync::tree::scan_into(&dir, None, sync::tree::Fidelity::Full, &mut |_| {})
        } else {
            sync::tree::scan(&dir, store, sync::tree::Fidelity::Plain, &mut |_| {})
        }
        .map_err(local)?;
        if sync::manifest::same_tree(&entries, &base_entries) {
            continue;
        }
        let new_chunks = if layer.is_system() {
            Vec::new()
        } else {
            let old: BTreeSet<ChunkId> = file_chunks(&base_entries).collect();
            file_chunks(&entries)
                .filter(|id| !old.contains(id))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        out.push(Pending {
            layer: *layer,
            base_digest: base.digest.clone(),
            entries,
            new_chunks,
        });
    }
    Ok(out)
}

/// Upload the chunks of `ids` the gateway lacks. The number sent.
pub(super) async fn upload(
    c: &GatewayClient,
    image: &str,
    store: &ChunkStore,
    ids: &[ChunkId],
    meter: &Meter,
) -> Result<u64, SyncError> {
    let mut sent = 0;
    for ask in ids.chunks(protocol::limits::MAX_ASK) {
        let ask = Ids { ids: ask.to_vec() };
        let Missing { missing } = json_call(c, image, SyncAction::Missing, &ask, meter).await?;
        let mut body = Vec::new();
        for id in missing {
            let bytes = store.get_compressed(id).map_err(local)?;
            sync::wire::write_frame(&mut body, id, &bytes);
            sent += 1;
            if body.len() > 4 << 20 {
                send_frames(c, image, std::mem::take(&mut body), meter).await?;
            }
        }
        if !body.is_empty() {
            send_frames(c, image, body, meter).await?;
        }
    }
    Ok(sent)
}

pub(super) async fn send_frames(
    c: &GatewayClient,
    image: &str,
    body: Vec<u8>,
    meter: &Meter,
) -> Result<(), SyncError> {
    let (status, bytes) = c
        .send(
            hyper::Method::POST,
            &paths::sync(image, SyncAction::Upload),
            "application/octet-stream",
            body,
            Some(meter),
        )
        .await?;
    if status != 200 {
        return Err(refused(status, &bytes));
    }
    Ok(())
}
