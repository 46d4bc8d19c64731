//! The sync routes, for honoured device certificates only, each checked
//! against the device's subscription (`p, SUBJECT, image, NAME, subscribe,
//! allow`):
//!
//! | route | body | answer |
//! |---|---|---|
//! | `GET /v1/sync/images/NAME` | | `{"image", "manifest_key", "layers": [{"layer", "version", "digest", "manifest"}]}` |
//! | `POST /v1/sync/images/NAME/offer` | `{"have": [DIGEST, ...]}` (the layer versions the device holds) | as `GET`, but each layer's `manifest` replaced by `manifest_delta`: `{"base": DIGEST or null, "zstd": BASE64}`, the signed manifest as a zstd delta against the held version of that layer (or compressed whole) |
//! | `POST /v1/sync/images/NAME/chunks` | `{"ids": [...]}` (at most 256) | chunk frames ([`sync::wire`]) |
//! | `POST /v1/sync/images/NAME/deltas` | `{"files": [{"from", "to", "missing"}]}` (at most 64 files; chunk id lists) | delta records ([`sync::wire::Record`]): per file, a zstd delta of the new file against the old one, or its missing chunks, whichever is smaller |
//! | `POST /v1/sync/images/NAME/missing` | `{"ids": [...]}` (at most 4096) | `{"missing": [...]}`: the ones the gateway lacks |
//! | `POST /v1/sync/images/NAME/upload` | chunk frames (at most 8 MiB) | `{"stored", "known"}`; every chunk checked against its id |
//! | `POST /v1/sync/images/NAME/checkin` | `{"layer", "base_digest", "entries"}` | `{"layer", "version", "digest", "conflicts", "violations", "from_client"}` |
//!
//! A device is only sent chunks of the layers it gets. Every pull, check-in,
//! conflict and violation is an audit entry (`kind` `sync`).

use std::collections::HashSet;

use base64::Engine as _;
use serde_json::{json, Value};
use sync::manifest::{LayerManifest, Signed};
use sync::ChunkId;

use crate::app::{record, AppState};
use crate::chunks::ChunkError;
use crate::images::StoredLayer;
use crate::reply::{bad, internal, ok, refuse, Reply};
use crate::state::Device;

pub use protocol::limits::{
    MAX_ASK, MAX_DELTA_CHUNKS, MAX_DELTA_FILES, MAX_DELTA_TOTAL, MAX_FETCH,
};

/// The chunk ids a device may be sent: those of the layers it gets.
#[derive(Debug, Clone)]
struct Allowed(Vec<std::sync::Arc<HashSet<ChunkId>>>);

impl Allowed {
    fn contains(&self, id: &ChunkId) -> bool {
        self.0.iter().any(|s| s.contains(id))
    }
}

use hyper::Method;
use protocol::paths::SyncAction;
use protocol::sync::{
    CheckedIn, DeltasRequest, Ids, ManifestDelta, Missing, Offer, OfferRequest, OfferedLayer,
    Uploaded,
};

impl AppState {
    /// Serve a `/v1/sync/images/...` route for `device`.
    pub async fn sync_route(
        &self,
        device: &Device,
        method: &hyper::Method,
        rest: &str,
        body: &[u8],
    ) -> Reply {
        let (image, action) = protocol::paths::parse_sync(rest);
        let segment = action.map_or("?", SyncAction::segment);
        if crate::images::check_image_name(image).is_err() {
            return refuse(404, "unknown image", "no such image", Value::Null);
        }
        if !self.subscribed(device, image) {
            self.record(
                "sync",
                &device.device_id,
                image,
                "deny",
                json!({"reason": "not subscribed", "action": segment}),
            )
            .await;
            return refuse(
                403,
                "not subscribed",
                format!("no policy rule lets this device subscribe to image {image:?}"),
                Value::Null,
            );
        }
        let Some(action) = action else {
            return refuse(404, "not found", "no such sync route", Value::Null);
        };
        let expected = if action.is_get() {
            Method::GET
        } else {
            Method::POST
        };
        if method != expected {
            return crate::routes::not_allowed("see docs/sync.md for the sync routes");
        }
        match action {
            SyncAction::Image => self.sync_image(device, image).await,
            SyncAction::Offer => self.sync_offer(device, image, body).await,
            SyncAction::Chunks => self.sync_chunks(device, image, body).await,
            SyncAction::Missing => self.sync_missing(device, image, body).await,
            SyncAction::Deltas => self.sync_deltas(device, image, body).await,
            SyncAction::Upload => self.sync_upload(device, image, body).await,
            SyncAction::Checkin => self.sync_checkin(device, image, body).await,
        }
    }

    fn subscribed(&self, device: &Device, image: &str) -> bool {
        self.policy()
            .decide_with_groups(
                &format!("device:{}", device.device_id),
                &device.groups,
                &policy::Request::Image {
                    name: image.to_owned(),
                },
            )
            .allow
    }

    async fn layers_for(&self, device: &Device, image: &str) -> Result<Vec<StoredLayer>, Reply> {
        layers_for(&self.images, device, image).await
    }

    async fn sync_image(&self, device: &Device, image: &str) -> Reply {
        self.offer(device, image, Vec::new(), false).await
    }

    /// `POST .../offer {"have": [DIGEST, ...]}`: the image as `GET` gives it,
    /// but each manifest as a zstd delta against the version of that layer
    /// the device says it holds (or compressed whole when it holds none).
    async fn sync_offer(&self, device: &Device, image: &str, body: &[u8]) -> Reply {
        let have: OfferRequest = match serde_json::from_slice(body) {
            Ok(h) => h,
            Err(e) => return bad(format!("expected {{\"have\": [digest, ...]}}: {e}")),
        };
        if have.have.len() > protocol::limits::MAX_OFFER_DIGESTS {
            return bad(format!(
                "at most {} digests",
                protocol::limits::MAX_OFFER_DIGESTS
            ));
        }
        self.offer(device, image, have.have, true).await
    }

    /// The image's layers for `device`: each manifest whole, or with
    /// `as_deltas` as a delta against the version in `have` of its layer.
    async fn offer(
        &self,
        device: &Device,
        image: &str,
        have: Vec<String>,
        as_deltas: bool,
    ) -> Reply {
        let pem = match ed25519_dalek::pkcs8::EncodePublicKey::to_public_key_pem(
            &self.manifest_key.verifying_key(),
            ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF,
        ) {
            Ok(p) => p,
            Err(e) => return internal(&e),
        };
        // The bases: versions of this image the device may hold (its own or
        // the image's), by digest. Another device's versions are never bases.
        let bases: Vec<StoredLayer> = if have.is_empty() {
            Vec::new()
        } else {
            match self.images.history(image).await {
                Ok(h) => h
                    .into_iter()
                    .filter(|l| l.owner.is_empty() || l.owner == device.device_id)
                    .filter(|l| have.contains(&l.digest))
                    .collect(),
                Err(e) => return internal(&e),
            }
        };
        // Noted before the answer, what it holds first: a pin older than
        // that does not hold it back; what it was offered is kept (and its
        // chunks stay fetchable) while it pulls.
        if let Err(e) = self
            .images
            .mark(&device.device_id, image, &[], &bases)
            .await
        {
            return internal(&e);
        }
        let layers = match self.layers_for(device, image).await {
            Ok(l) => l,
            Err(a) => return a,
        };
        if let Err(e) = self
            .images
            .mark(&device.device_id, image, &layers, &[])
            .await
        {
            return internal(&e);
        }
        self.record(
            "sync",
            &device.device_id,
            image,
            "pull",
            json!({"layers": layers.iter().map(|l| json!({"layer": l.layer, "version": l.version, "digest": l.digest})).collect::<Vec<_>>()}),
        )
        .await;
        let work = tokio::task::spawn_blocking(move || {
            layers
                .iter()
                .map(|l| offered(l, as_deltas.then_some(bases.as_slice())))
                .collect::<std::io::Result<Vec<OfferedLayer>>>()
        })
        .await;
        let layers = match work {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => return internal(&e),
            Err(e) => return internal(&e),
        };
        ok(Offer {
            image: image.to_owned(),
            manifest_key: pem,
            layers,
        })
    }

    async fn sync_chunks(&self, device: &Device, image: &str, body: &[u8]) -> Reply {
        let ids: Ids = match serde_json::from_slice(body) {
            Ok(i) => i,
            Err(e) => return bad(format!("expected {{\"ids\": [...]}}: {e}")),
        };
        if ids.ids.len() > MAX_FETCH {
            return bad(format!("at most {MAX_FETCH} ids per request"));
        }
        let allowed = match self.allowed_chunks(device, image).await {
            Ok(a) => a,
            Err(a) => return a,
        };
        if let Some(id) = ids.ids.iter().find(|id| !allowed.contains(id)) {
            return refuse(
                403,
                "not in this image",
                format!("chunk {id} is not part of the layers this device gets"),
                Value::Null,
            );
        }
        // With a shared object store, what this gateway lacks comes from it.
        if let Err(e) = self.images.chunks.fill(&ids.ids).await {
            return internal(&e);
        }
        // Reading the store is blocking file I/O: off the async threads, so
        // a device's overlapping requests are served side by side.
        let chunks = self.images.chunks.cache().clone();
        let work = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for id in ids.ids {
                let bytes = chunks.get_compressed(id)?;
                sync::wire::write_frame(&mut out, id, &bytes);
            }
            Ok::<_, sync::store::StoreError>(out)
        })
        .await;
        match work {
            Ok(Ok(out)) => Reply::Frames(out),
            Ok(Err(e)) => internal(&e),
            Err(e) => internal(&e),
        }
    }

    /// The chunk ids of the layers `device` gets of `image`, and of those
    /// it was last offered (a pull that began before a new build or a pin
    /// finishes).
    async fn allowed_chunks(&self, device: &Device, image: &str) -> Result<Allowed, Reply> {
        let mut layers = self.layers_for(device, image).await?;
        let offered = self
            .images
            .offered_to(&device.device_id, image)
            .await
            .map_err(|e| internal(&e))?;
        for o in offered {
            if !layers.iter().any(|l| l.digest == o.digest) {
                layers.push(o);
            }
        }
        let key = self.manifest_key.verifying_key();
        let mut sets = Vec::with_capacity(layers.len());
        for l in &layers {
            match self.images.chunk_set(l, &key) {
                Ok(set) => sets.push(set),
                Err(e) => return Err(internal(&e)),
            }
        }
        Ok(Allowed(sets))
    }

    async fn sync_deltas(&self, device: &Device, image: &str, body: &[u8]) -> Reply {
        let r: DeltasRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return bad(format!("expected {{\"files\": [...]}}: {e}")),
        };
        if r.files.len() > MAX_DELTA_FILES {
            return bad(format!("at most {MAX_DELTA_FILES} files per request"));
        }
        // Bounded before anything is read: each file's chunks, all of them,
        // and a file's missing chunks only among its new ones.
        let mut total = 0usize;
        for f in &r.files {
            if f.from.len() > MAX_DELTA_CHUNKS || f.to.len() > MAX_DELTA_CHUNKS {
                return bad(format!("a file of more than {MAX_DELTA_CHUNKS} chunks"));
            }
            total += f.from.len() + f.to.len();
            let new: HashSet<&ChunkId> = f.to.iter().collect();
            if f.missing.len() > f.to.len() || !f.missing.iter().all(|id| new.contains(id)) {
                return bad("a file's missing chunks must be among its new chunks");
            }
        }
        if total > MAX_DELTA_TOTAL {
            return bad(format!(
                "at most {MAX_DELTA_TOTAL} chunk ids (old and new, all files) per request"
            ));
        }
        let allowed = match self.allowed_chunks(device, image).await {
            Ok(a) => a,
            Err(a) => return a,
        };
        // The old files a delta is made against must be ones this device
        // may read: a delta against another's chunk would tell of it.
        let from: Vec<ChunkId> = r
            .files
            .iter()
            .flat_map(|f| f.from.iter().copied())
            .collect();
        let entitled = match self.entitled(device, image, &from).await {
            Ok(e) => e,
            Err(a) => return a,
        };
        if let Some(id) = from.iter().find(|id| !entitled.contains(id)) {
            return refuse(
                403,
                "not this device's",
                format!("chunk {id} is in no version of the layers this device gets and was not uploaded by it"),
                Value::Null,
            );
        }
        // The chunks a delta is made of, from the shared object store where
        // this gateway lacks them: only those this device may have.
        let wanted: Vec<ChunkId> = r
            .files
            .iter()
            .flat_map(|f| f.to.iter().chain(&f.missing))
            .copied()
            .collect();
        if wanted.iter().all(|id| allowed.contains(id)) {
            let all: Vec<ChunkId> = from.iter().chain(&wanted).copied().collect();
            if let Err(e) = self.images.chunks.fill(&all).await {
                return internal(&e);
            }
        }
        let images = self.images.clone();
        // Compression is CPU work: off the async threads.
        let work = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, Reply> {
            let mut out = Vec::new();
            for (i, f) in r.files.iter().enumerate() {
                let file = u32::try_from(i).unwrap_or(u32::MAX);
                if let Some(id) =
                    f.to.iter()
                        .chain(&f.missing)
                        .find(|id| !allowed.contains(id))
                {
                    return Err(refuse(
                        403,
                        "not in this image",
                        format!("chunk {id} is not part of the layers this device gets"),
                        Value::Null,
                    ));
                }
                let mut cost = 0usize;
                let mut missing = Vec::with_capacity(f.missing.len());
                // Each chunk answered once, however often it is named.
                let mut seen = HashSet::new();
                for id in f.missing.iter().filter(|id| seen.insert(**id)) {
                    let c = images
                        .chunks
                        .cache()
                        .get_compressed(*id)
                        .map_err(|e| internal(&e))?;
                    cost += c.len() + 41;
                    missing.push((*id, c));
                }
                // The old file may hold chunks the gateway no longer has
                // (or never had): then no delta.
                let delta = if f.missing.is_empty() {
                    None
                } else {
                    images.delta(&f.from, &f.to)
                };
                match delta {
                    Some(d) if d.len() + 9 < cost => sync::wire::write_record(
                        &mut out,
                        &sync::wire::Record::Delta {
                            file,
                            delta: d.to_vec(),
                        },
                    ),
                    _ => {
                        for (id, c) in missing {
                            sync::wire::write_record(
                                &mut out,
                                &sync::wire::Record::Chunk {
                                    file,
                                    id,
                                    compressed: c,
                                },
                            );
                        }
                    }
                }
            }
            Ok(out)
        })
        .await;
        match work {
            Ok(Ok(bytes)) => Reply::Frames(bytes),
            Ok(Err(a)) => a,
            Err(e) => internal(&e),
        }
    }

    /// `POST .../missing`: which of the ids the gateway lacks, answered only
    /// for chunks this device is entitled to (in a version of a layer it
    /// gets, or uploaded by it); any other id is "missing", so the answer
    /// never tells whether someone else's chunk exists.
    async fn sync_missing(&self, device: &Device, image: &str, body: &[u8]) -> Reply {
        let ids: Ids = match serde_json::from_slice(body) {
            Ok(i) => i,
            Err(e) => return bad(format!("expected {{\"ids\": [...]}}: {e}")),
        };
        if ids.ids.len() > MAX_ASK {
            return bad(format!("at most {MAX_ASK} ids per request"));
        }
        let entitled = match self.entitled(device, image, &ids.ids).await {
            Ok(e) => e,
            Err(r) => return r,
        };
        let mine: Vec<ChunkId> = ids
            .ids
            .iter()
            .copied()
            .filter(|id| entitled.contains(id))
            .collect();
        let lacking: HashSet<ChunkId> = match self.images.chunks.missing(&mine).await {
            Ok(m) => m.into_iter().collect(),
            Err(e) => return internal(&e),
        };
        let missing = ids
            .ids
            .into_iter()
            .filter(|id| !entitled.contains(id) || lacking.contains(id))
            .collect();
        ok(Missing { missing })
    }

    /// `POST .../upload`: store chunk frames (each checked against its id)
    /// and record them as this device's. `known` counts only chunks the
    /// device was entitled to before.
    async fn sync_upload(&self, device: &Device, image: &str, body: &[u8]) -> Reply {
        let frames = match sync::wire::read_frames(body) {
            Ok(f) => f,
            Err(e) => return bad(e.to_string()),
        };
        let ids: Vec<ChunkId> = frames.iter().map(|(id, _)| *id).collect();
        let entitled = match self.entitled(device, image, &ids).await {
            Ok(e) => e,
            Err(r) => return r,
        };
        let (mut stored, mut known) = (0u64, 0u64);
        let frames = frames
            .into_iter()
            .map(|(id, bytes)| (id, bytes.to_vec()))
            .collect();
        match self.images.chunks.put_compressed(frames).await {
            Ok(news) => {
                for (id, new) in news {
                    if !new && entitled.contains(&id) {
                        known += 1;
                    } else {
                        stored += 1;
                    }
                }
            }
            Err(ChunkError::Store(e @ sync::store::StoreError::Corrupt { .. })) => {
                return refuse(400, "bad chunk", e.to_string(), Value::Null)
            }
            Err(e) => return internal(&e),
        }
        if let Err(e) = self.db.record_uploads(&device.device_id, &ids).await {
            return internal(&e);
        }
        ok(Uploaded { stored, known })
    }

    /// The chunks `device` is entitled to among `asked`: those of every
    /// version of `image` it could have held (the image's, and its own user
    /// layers'), and those it uploaded.
    async fn entitled(
        &self,
        device: &Device,
        image: &str,
        asked: &[ChunkId],
    ) -> Result<Allowed, Reply> {
        let history = self.images.history(image).await.map_err(|e| internal(&e))?;
        let key = self.manifest_key.verifying_key();
        let mut sets = Vec::new();
        for l in history
            .iter()
            .filter(|l| l.owner.is_empty() || l.owner == device.device_id)
        {
            sets.push(self.images.chunk_set(l, &key).map_err(|e| internal(&e))?);
        }
        let unknown: Vec<ChunkId> = asked
            .iter()
            .filter(|id| !sets.iter().any(|s| s.contains(id)))
            .copied()
            .collect();
        if !unknown.is_empty() {
            let uploaded = self
                .db
                .uploaded(&device.device_id, &unknown)
                .await
                .map_err(|e| internal(&e))?;
            sets.push(std::sync::Arc::new(uploaded));
        }
        Ok(Allowed(sets))
    }

    async fn sync_checkin(&self, device: &Device, image: &str, body: &[u8]) -> Reply {
        let r: CheckIn = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return bad(format!("not a check-in: {e}")),
        };
        checkin(
            &self.images,
            &self.db,
            &self.manifest_key,
            &self.audit,
            device,
            image,
            r,
        )
        .await
    }
}

/// One layer as offered: its manifest whole, or (with `bases`, the
/// versions the device holds) as a zstd delta against the held version of
/// that layer, or compressed whole when it holds none.
fn offered(l: &StoredLayer, bases: Option<&[StoredLayer]>) -> std::io::Result<OfferedLayer> {
    let mut v = OfferedLayer {
        layer: l.layer,
        version: l.version,
        digest: l.digest.clone(),
        manifest: None,
        manifest_delta: None,
    };
    let Some(bases) = bases else {
        v.manifest = Some(l.signed.clone());
        return Ok(v);
    };
    let base = bases.iter().find(|b| b.layer == l.layer);
    let base_text = base.map_or("", |b| b.signed.as_str());
    match sync::delta::make(base_text.as_bytes(), l.signed.as_bytes())? {
        Some(d) => {
            v.manifest_delta = Some(ManifestDelta {
                base: base.map(|b| b.digest.clone()),
                zstd: base64::engine::general_purpose::STANDARD.encode(d),
            })
        }
        None => v.manifest = Some(l.signed.clone()),
    }
    Ok(v)
}

pub use protocol::sync::CheckIn;

async fn layers_for(
    images: &crate::images::Images,
    device: &Device,
    image: &str,
) -> Result<Vec<StoredLayer>, Reply> {
    match images.for_device(image, &device.device_id).await {
        Ok(v) if v.is_empty() => Err(refuse(
            404,
            "unknown image",
            format!("the gateway has no layers of image {image:?}"),
            Value::Null,
        )),
        Ok(v) => Ok(v),
        Err(e) => Err(internal(&e)),
    }
}

/// Every chunk a user layer's check-in references must be one the device
/// had (in `had`: the base it names and the gateway's current version) or
/// uploaded itself: a check-in never turns another's chunk into the
/// device's own.
async fn own_chunks(
    db: &crate::state::Db,
    device: &Device,
    entries: &[sync::manifest::Entry],
    had: &[&[sync::manifest::Entry]],
) -> Result<(), Reply> {
    let known: HashSet<ChunkId> = had.iter().flat_map(|e| file_chunks(e)).collect();
    let new: Vec<ChunkId> = file_chunks(entries)
        .filter(|id| !known.contains(id))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let uploaded = db
        .uploaded(&device.device_id, &new)
        .await
        .map_err(|e| internal(&e))?;
    match new.iter().find(|id| !uploaded.contains(id)) {
        Some(id) => Err(refuse(
            403,
            "not this device's",
            format!("chunk {id} is in no version of this layer the device had and was not uploaded by it"),
            Value::Null,
        )),
        None => Ok(()),
    }
}

/// The chunk ids of the files of `entries`.
fn file_chunks(entries: &[sync::manifest::Entry]) -> impl Iterator<Item = ChunkId> + '_ {
    entries
        .iter()
        .flat_map(|e| match &e.kind {
            sync::Kind::File { chunks, .. } => chunks.as_slice(),
            _ => &[],
        })
        .copied()
}

/// Reconcile one layer's check-in from `device` and store the result
/// (online through the route, offline from a bundle).
pub async fn checkin(
    images: &crate::images::Images,
    db: &crate::state::Db,
    key: &ed25519_dalek::SigningKey,
    audit: &audit::store::Store,
    device: &Device,
    image: &str,
    r: CheckIn,
) -> Reply {
    let c = Checkin {
        images,
        key,
        audit,
        device,
        image,
        layer: r.layer,
    };
    match c.run(db, r.base_digest.as_deref(), r.entries).await {
        Ok(answer) => ok(answer),
        Err(reply) => reply,
    }
}

/// One check-in of one layer.
struct Checkin<'a> {
    images: &'a crate::images::Images,
    key: &'a ed25519_dalek::SigningKey,
    audit: &'a audit::store::Store,
    device: &'a Device,
    image: &'a str,
    layer: sync::manifest::Layer,
}

impl Checkin<'_> {
    /// Validate, merge three-way, store (user layers), audit.
    async fn run(
        &self,
        db: &crate::state::Db,
        base_digest: Option<&str>,
        entries: Vec<sync::manifest::Entry>,
    ) -> Result<CheckedIn, Reply> {
        let (client, stripped) = self.client_tree(entries).await?;
        let layers = layers_for(self.images, self.device, self.image).await?;
        let latest = layers.iter().find(|l| l.layer == self.layer);
        let gateway_entries = match latest {
            Some(l) => self.open(l)?,
            None => Vec::new(),
        };
        let base_entries = self.base(base_digest).await?;
        if !self.layer.is_system() {
            own_chunks(db, self.device, &client, &[&base_entries, &gateway_entries]).await?;
        }
        let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let merged = sync::reconcile::merge(
            self.layer,
            &base_entries,
            &gateway_entries,
            &client,
            &self.device.device_id,
            date.get(..10).unwrap_or("0000-00-00"),
        );
        if !merged.violations.is_empty() {
            self.note("violation", json!({"paths": merged.violations}))
                .await;
        }
        let (version, digest) = match latest {
            Some(l) if self.layer.is_system() => (l.version, Some(l.digest.clone())),
            None if self.layer.is_system() => (0, None),
            _ => self.store(&merged.entries).await?,
        };
        if !merged.conflicts.is_empty() {
            self.note("conflict", json!({"conflicts": merged.conflicts}))
                .await;
        }
        self.note("checkin", json!({"version": version, "from_client": merged.from_client.len(), "conflicts": merged.conflicts.len(), "violations": merged.violations.len()}))
            .await;
        Ok(CheckedIn {
            layer: self.layer,
            version,
            digest,
            conflicts: merged.conflicts,
            violations: merged.violations,
            from_client: merged.from_client,
            stripped,
        })
    }

    /// One audit entry about this layer.
    async fn note(&self, decision: &str, details: Value) {
        let subject = format!("{}/{}", self.image, self.layer);
        record(
            self.audit,
            "sync",
            &self.device.device_id,
            &subject,
            decision,
            details,
        )
        .await;
    }

    /// The device's tree: a user layer never carries setuid, setgid or
    /// sticky bits (stripped, reported, audited); it must be a valid layer.
    async fn client_tree(
        &self,
        mut entries: Vec<sync::manifest::Entry>,
    ) -> Result<(Vec<sync::manifest::Entry>, Vec<String>), Reply> {
        let stripped = self.layer.strip_special_bits(&mut entries);
        if !stripped.is_empty() {
            let reason = "setuid, setgid or sticky bits, an owner, a time, an attribute other than user.* or a device node in a user layer";
            self.note("stripped", json!({"reason": reason, "paths": stripped}))
                .await;
        }
        let client = LayerManifest {
            format: sync::manifest::format_for(&entries).to_owned(),
            image: self.image.to_owned(),
            layer: self.layer,
            version: 0,
            created: String::new(),
            entries,
        };
        client.validate().map_err(|e| bad(e.to_string()))?;
        Ok((client.entries, stripped))
    }

    /// A stored version's entries.
    fn open(&self, l: &StoredLayer) -> Result<Vec<sync::manifest::Entry>, Reply> {
        Signed::verify(&l.signed, &self.key.verifying_key())
            .map(|s| s.manifest.entries)
            .map_err(|e| internal(&e))
    }

    /// The base: the version the device last had (its own or the image's).
    async fn base(&self, digest: Option<&str>) -> Result<Vec<sync::manifest::Entry>, Reply> {
        let Some(d) = digest else {
            return Ok(Vec::new());
        };
        let all = self
            .images
            .history(self.image)
            .await
            .map_err(|e| internal(&e))?;
        let had = all.iter().find(|l| {
            l.digest == d
                && l.layer == self.layer
                && (l.owner.is_empty() || l.owner == self.device.device_id)
        });
        match had {
            Some(l) => self.open(l),
            None => Err(refuse(
                409,
                "unknown base",
                "the base_digest is not a version this device had; pull first",
                Value::Null,
            )),
        }
    }

    /// Store the merged user layer as the device's new version, once every
    /// chunk it names is in the store.
    async fn store(
        &self,
        entries: &[sync::manifest::Entry],
    ) -> Result<(u64, Option<String>), Reply> {
        let ids: Vec<ChunkId> = file_chunks(entries).collect();
        // Every gateway must be able to serve the version: what the shared
        // object store lacks is put there from this gateway's cache, or
        // named missing.
        let lacking = match self.images.chunks.unshared(&ids).await {
            Ok(l) => l,
            Err(e) => return Err(internal(&e)),
        };
        let missing: Vec<String> = lacking
            .into_iter()
            .map(|id| id.to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if !missing.is_empty() {
            return Err(refuse(
                409,
                "chunks missing",
                "upload these chunks first",
                json!({"missing": missing}),
            ));
        }
        let stored = self
            .images
            .commit(
                self.image,
                self.layer,
                &self.device.device_id,
                entries.to_vec(),
                self.key,
            )
            .await
            .map_err(|e| internal(&e))?;
        Ok((stored.0.version, Some(stored.0.digest)))
    }
}
