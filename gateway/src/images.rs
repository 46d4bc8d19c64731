//! Images on the gateway: layer versions in the database, chunks in the
//! data directory's chunk store (`DATA/chunks`) and, where one is
//! configured, the shared object store ([`crate::chunks`]), manifests
//! signed with the manifest key (`DATA/manifest.key`).
//!
//! System layers (`base-os`, `group-apps`) are one per image. User layers
//! (`personal-apps`, `user-system`, `user-data`) are one per image and
//! device: a device's own versions come from its check-ins; until it has
//! one, it gets the image's template (the version `satchel image build`
//! made, owner `""`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sqlx::{AnyPool, Row};
use sync::manifest::{Entry, Layer, LayerManifest, Signed};
use sync::tree::ScanStats;
use sync::{ChunkId, ChunkStore};

use crate::chunks::{ChunkError, Chunks, RemoteConfig};

use crate::state::DbError;

mod versions;

pub use versions::{Mark, Pin, Retired};

/// A stored layer version.
#[derive(Debug, Clone)]
pub struct StoredLayer {
    /// The image.
    pub image: String,
    /// The layer.
    pub layer: Layer,
    /// `""` for the image's own version, else the device it belongs to.
    pub owner: String,
    /// Its version.
    pub version: u64,
    /// Its digest.
    pub digest: String,
    /// The signed manifest.
    pub signed: String,
    /// When it was made (ms since the epoch).
    pub created_ms: i64,
}

/// An images problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The database.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A directory that cannot be scanned or written.
    #[error(transparent)]
    Tree(#[from] sync::tree::TreeError),
    /// The chunk store.
    #[error(transparent)]
    Store(#[from] sync::store::StoreError),
    /// The shared object store.
    #[error(transparent)]
    Chunks(#[from] ChunkError),
    /// A manifest that cannot be made or read.
    #[error(transparent)]
    Manifest(#[from] sync::manifest::ManifestError),
    /// A bad name.
    #[error("{0}")]
    Invalid(String),
}

fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> DbError {
    move |source| DbError::new(what, source)
}

/// The layer table and the chunk store.
#[derive(Debug, Clone)]
pub struct Images {
    pool: AnyPool,
    /// The chunks.
    pub chunks: Chunks,
    /// The chunk ids of layer versions, by digest, verified once: a pull
    /// asks for a large image's chunks in many requests.
    chunk_sets: Arc<std::sync::Mutex<HashMap<String, Arc<HashSet<ChunkId>>>>>,
    /// File deltas made, by (old chunk ids, new chunk ids): every device of
    /// a branch asks for the same ones after an update.
    deltas: Arc<DeltaCache>,
    deltas_made: Arc<std::sync::atomic::AtomicU64>,
}

/// Deltas the gateway keeps, by the SHA-256 of a file's old and new chunk
/// ids; `None` where the files were too large for a delta. Least recently
/// used go first past [`DELTAS_KEPT`] bytes.
type DeltaCache = quick_cache::sync::Cache<[u8; 32], Option<Arc<[u8]>>, DeltaWeight>;

/// Bytes of deltas kept in memory.
pub const DELTAS_KEPT: u64 = 64 << 20;

#[derive(Clone)]
struct DeltaWeight;

impl quick_cache::Weighter<[u8; 32], Option<Arc<[u8]>>> for DeltaWeight {
    fn weight(&self, _: &[u8; 32], delta: &Option<Arc<[u8]>>) -> u64 {
        // What a delta holds, and what an entry costs besides.
        delta.as_ref().map_or(0, |d| d.len()) as u64 + 96
    }
}

/// Layer versions whose chunk sets are kept; beyond it the cache starts over.
const CHUNK_SETS_KEPT: usize = 64;

/// Check an image name: 1-64 characters of letters, digits, `-`, `_`, `.`.
pub fn check_image_name(name: &str) -> Result<(), ImageError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ImageError::Invalid(format!(
            "image name {name:?}: use 1-64 letters, digits, '-', '_' or '.'"
        )))
    }
}

fn row_layer(r: &sqlx::any::AnyRow) -> Option<StoredLayer> {
    Some(StoredLayer {
        image: r.try_get(0).ok()?,
        layer: r.try_get::<String, _>(1).ok()?.parse().ok()?,
        owner: r.try_get(2).ok()?,
        version: u64::try_from(r.try_get::<i64, _>(3).ok()?).ok()?,
        digest: r.try_get(4).ok()?,
        signed: r.try_get(5).ok()?,
        created_ms: r.try_get(6).ok()?,
    })
}

const COLUMNS: &str = "image, layer, owner, version, digest, signed, created_ms";

impl Images {
    /// Use `pool` and the store under `data`, making the table if missing.
    pub async fn open(pool: AnyPool, data: &Path) -> Result<Images, ImageError> {
        Images::open_with(pool, data, None).await
    }

    /// [`open`](Self::open), with the store under `data` as the cache in
    /// front of the object store `remote` names (see [`crate::chunks`]).
    pub async fn open_with(
        pool: AnyPool,
        data: &Path,
        remote: Option<&RemoteConfig>,
    ) -> Result<Images, ImageError> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS gateway_layers (image TEXT NOT NULL, layer TEXT NOT NULL, \
             owner TEXT NOT NULL, version BIGINT NOT NULL, digest TEXT NOT NULL, signed TEXT NOT NULL, \
             created_ms BIGINT NOT NULL, PRIMARY KEY (image, layer, owner, version))",
        )
        .execute(&pool)
        .await
        .map_err(db("creating gateway_layers"))?;
        for ddl in versions::DDL {
            sqlx::query(ddl)
                .execute(&pool)
                .await
                .map_err(db("creating the version tables"))?;
        }
        let mut chunks = Chunks::local(
            ChunkStore::open(data.join("chunks"))?.with_level(sync::store::GATEWAY_LEVEL),
        );
        let wanted = remote.map(RemoteConfig::canonical).transpose()?;
        let (database, recorded) = chunk_home(&pool).await?;
        match (&wanted, &recorded) {
            (None, Some(url)) => {
                return Err(ImageError::Invalid(format!(
                    "this database's chunks are in the object store {url}: give --chunk-store {url} \
                     (and its endpoint and credentials), or the gateway configuration that names it"
                )))
            }
            (Some(w), Some(url)) if w != url => {
                return Err(ImageError::Invalid(format!(
                    "this database's chunks are in the object store {url}, not {w}"
                )))
            }
            _ => {}
        }
        if let (Some(r), Some(w)) = (remote, wanted) {
            chunks = chunks.with_remote(r).await?;
            chunks.claim(&database).await?;
            // Recorded once the store has answered and taken this
            // database's id, and holds every chunk this gateway holds
            // already (the versions stored before the object store was
            // configured): a mistyped first address is not kept, and an
            // interrupted upload is taken up again at the next start.
            if recorded.is_none() {
                let cache = chunks.cache().clone();
                let held: Vec<ChunkId> = tokio::task::spawn_blocking(move || {
                    cache
                        .loose_chunks()
                        .map(|c| c.into_iter().map(|(id, ..)| id).collect())
                })
                .await
                .map_err(|e| ImageError::Invalid(format!("a task stopped: {e}")))??;
                chunks.publish(&held).await?;
                tracing::info!(held = held.len(), store = %w, "chunks held here are in the object store");
                sqlx::query(
                    "INSERT INTO gateway_settings (name, value) VALUES ('chunk-store', $1) \
                     ON CONFLICT (name) DO NOTHING",
                )
                .bind(w)
                .execute(&pool)
                .await
                .map_err(db("recording the object store"))?;
            }
        }
        Ok(Images {
            pool,
            chunks,
            chunk_sets: Arc::default(),
            deltas: Arc::new(DeltaCache::with_weighter(4096, DELTAS_KEPT, DeltaWeight)),
            deltas_made: Arc::default(),
        })
    }

    /// The delta ([`sync::delta::make`]) from the file made of the chunks
    /// `from` to the file made of `to`, made once and then kept. `None` if
    /// the files are too large for one, or the store lacks a chunk of
    /// either (that answer is not kept: the chunk may arrive later).
    pub fn delta(&self, from: &[ChunkId], to: &[ChunkId]) -> Option<Arc<[u8]>> {
        use sha2::Digest as _;
        let mut key = sha2::Sha256::new();
        for (side, ids) in [(b'f', from), (b't', to)] {
            key.update([side]);
            key.update((ids.len() as u64).to_be_bytes());
            for id in ids {
                key.update(id.0);
            }
        }
        let key: [u8; 32] = key.finalize().into();
        let concat = |ids: &[ChunkId]| -> Option<Vec<u8>> {
            let mut v = Vec::new();
            for id in ids {
                v.extend(self.chunks.cache().get(*id).ok()?);
            }
            Some(v)
        };
        self.deltas
            .get_or_insert_with(&key, || {
                let (Some(old), Some(new)) = (concat(from), concat(to)) else {
                    return Err(());
                };
                self.deltas_made
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(sync::delta::make(&old, &new).ok().flatten().map(Arc::from))
            })
            .ok()
            .flatten()
    }

    /// How many deltas [`delta`](Self::delta) has made (not taken from those kept).
    pub fn deltas_made(&self) -> u64 {
        self.deltas_made.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The chunk ids of `layer`, its manifest verified with `key` the first
    /// time this version is asked for.
    pub fn chunk_set(
        &self,
        layer: &StoredLayer,
        key: &ed25519_dalek::VerifyingKey,
    ) -> Result<Arc<HashSet<ChunkId>>, sync::manifest::ManifestError> {
        let lock = || self.chunk_sets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(set) = lock().get(&layer.digest) {
            return Ok(set.clone());
        }
        let signed = Signed::verify(&layer.signed, key)?;
        let set: Arc<HashSet<ChunkId>> =
            Arc::new(signed.manifest.chunk_ids().into_iter().collect());
        let mut sets = lock();
        if sets.len() >= CHUNK_SETS_KEPT {
            sets.clear();
        }
        // Keyed by the digest of the bytes just verified, not the stored column.
        sets.insert(signed.digest, set.clone());
        Ok(set)
    }

    /// The newest version of `layer` of `image` owned by `owner`.
    pub async fn latest(
        &self,
        image: &str,
        layer: Layer,
        owner: &str,
    ) -> Result<Option<StoredLayer>, ImageError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM gateway_layers WHERE image = $1 AND layer = $2 AND owner = $3 \
             ORDER BY version DESC LIMIT 1"
        ))
        .bind(image.to_owned())
        .bind(layer.as_str().to_owned())
        .bind(owner.to_owned())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a layer"))?;
        Ok(row.as_ref().and_then(row_layer))
    }

    /// A given version.
    pub async fn version(
        &self,
        image: &str,
        layer: Layer,
        owner: &str,
        version: u64,
    ) -> Result<Option<StoredLayer>, ImageError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM gateway_layers WHERE image = $1 AND layer = $2 AND owner = $3 AND version = $4"
        ))
        .bind(image.to_owned())
        .bind(layer.as_str().to_owned())
        .bind(owner.to_owned())
        .bind(i64::try_from(version).unwrap_or(i64::MAX))
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a layer version"))?;
        Ok(row.as_ref().and_then(row_layer))
    }

    /// What `device` gets of `image`: per layer, its own newest version of
    /// a user layer, else the image's pinned version (the device's own pin,
    /// else the pin for every device), else the image's newest.
    pub async fn for_device(
        &self,
        image: &str,
        device: &str,
    ) -> Result<Vec<StoredLayer>, ImageError> {
        let mut out = Vec::new();
        for layer in Layer::ALL {
            let own = if layer.is_system() {
                self.pinned(image, layer, device).await?
            } else {
                self.latest(image, layer, device).await?
            };
            match own {
                Some(l) => out.push(l),
                None => out.extend(self.latest(image, layer, "").await?),
            }
        }
        Ok(out)
    }

    /// Every image's newest layer versions (owner `""`), by image.
    pub async fn list(&self) -> Result<BTreeMap<String, Vec<StoredLayer>>, ImageError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM gateway_layers WHERE owner = '' ORDER BY image, layer, version"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing layers"))?;
        let mut out: BTreeMap<String, BTreeMap<Layer, StoredLayer>> = BTreeMap::new();
        for l in rows.iter().filter_map(row_layer) {
            out.entry(l.image.clone()).or_default().insert(l.layer, l);
        }
        Ok(out
            .into_iter()
            .map(|(k, v)| (k, v.into_values().collect()))
            .collect())
    }

    /// Every version of every layer of `image` (all owners).
    pub async fn history(&self, image: &str) -> Result<Vec<StoredLayer>, ImageError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM gateway_layers WHERE image = $1 ORDER BY layer, owner, version"
        ))
        .bind(image.to_owned())
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading an image"))?;
        Ok(rows.iter().filter_map(row_layer).collect())
    }

    /// Sign and store a new version of `layer` with `entries`, unless it
    /// equals the newest one. The stored version, and whether it is new.
    pub async fn commit(
        &self,
        image: &str,
        layer: Layer,
        owner: &str,
        entries: Vec<Entry>,
        key: &ed25519_dalek::SigningKey,
    ) -> Result<(StoredLayer, bool), ImageError> {
        check_image_name(image)?;
        let latest = self.latest(image, layer, owner).await?;
        if let Some(l) = &latest {
            let old = Signed::verify(&l.signed, &key.verifying_key())?;
            if old.manifest.entries == entries {
                return Ok((l.clone(), false));
            }
        }
        // A device's own versions continue the image's numbering.
        let floor = if owner.is_empty() {
            0
        } else {
            self.latest(image, layer, "")
                .await?
                .map_or(0, |l| l.version)
        };
        let version = latest.map_or(0, |l| l.version).max(floor) + 1;
        let manifest = LayerManifest {
            format: sync::manifest::format_for(&entries).to_owned(),
            image: image.to_owned(),
            layer,
            version,
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            entries,
        };
        let signed = manifest.sign(key)?;
        let stored = StoredLayer {
            image: image.to_owned(),
            layer,
            owner: owner.to_owned(),
            version,
            digest: signed.digest,
            signed: signed.text,
            created_ms: audit::batch::now_ms(),
        };
        sqlx::query(&format!(
            "INSERT INTO gateway_layers ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(stored.image.clone())
        .bind(layer.as_str().to_owned())
        .bind(stored.owner.clone())
        .bind(i64::try_from(version).unwrap_or(i64::MAX))
        .bind(stored.digest.clone())
        .bind(stored.signed.clone())
        .bind(stored.created_ms)
        .execute(&self.pool)
        .await
        .map_err(db("storing a layer"))?;
        Ok((stored, true))
    }
}

/// One layer's build result.
#[derive(Debug, Clone)]
pub struct Built {
    /// The layer.
    pub layer: Layer,
    /// The version now newest.
    pub stored: StoredLayer,
    /// False if the tree equalled the newest version (nothing stored).
    pub new: bool,
    /// What the scan found.
    pub stats: ScanStats,
}

/// This database's id (made on first use), and the object store its
/// chunks are in, if one was recorded (by [`Images::open_with`], the first
/// time one is given and answers), so that a gateway or an admin command on
/// this database without it is refused rather than storing versions whose
/// chunks only its own disk holds.
async fn chunk_home(pool: &AnyPool) -> Result<(String, Option<String>), ImageError> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS gateway_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    )
    .execute(pool)
    .await
    .map_err(db("creating gateway_settings"))?;
    let mut raw = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut raw);
    sqlx::query(
        "INSERT INTO gateway_settings (name, value) VALUES ('database-id', $1) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(hex::encode(raw))
    .execute(pool)
    .await
    .map_err(db("recording the database id"))?;
    let get = |name: &'static str| {
        sqlx::query_scalar::<_, String>("SELECT value FROM gateway_settings WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
    };
    let id = get("database-id")
        .await
        .map_err(db("reading the database id"))?
        .unwrap_or_default();
    let url = get("chunk-store")
        .await
        .map_err(db("reading the object store"))?;
    Ok((id, url))
}

/// What [`Images::collect`] found and did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Collected {
    /// Chunks in the store.
    pub chunks: u64,
    /// Of those, referenced by a stored layer version (kept).
    pub referenced: u64,
    /// Unreferenced but written within the grace period (kept: an upload
    /// whose check-in may still come, or a build in progress).
    pub recent: u64,
    /// Unreferenced and older: removed (or, in a dry run, to remove).
    pub removed: u64,
    /// Their bytes on disk.
    pub removed_bytes: u64,
    /// Layer versions retired (`image/layer/version`, `@device` for a
    /// device's own): removed, or in a dry run, to remove.
    pub versions_removed: Vec<String>,
    /// The same counts for the shared object store, if one is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_store: Option<crate::chunks::RemoteCollected>,
}

impl Images {
    /// Remove the chunks no stored layer version references and that were
    /// written longer than `grace` ago: what failed builds, refused
    /// check-ins, abandoned uploads and retired versions left. With
    /// `keep`, versions past the newest `keep` of each layer go first
    /// ([`retire`](Self::retire)). Every remaining version's manifest is
    /// verified with `key` first; one that does not verify stops the
    /// collection (nothing is removed on a guess). A chunk stored again
    /// while the collection runs is kept
    /// ([`sync::store::clean::remove_loose_if_older`]).
    pub async fn collect(
        &self,
        key: &ed25519_dalek::VerifyingKey,
        grace: std::time::Duration,
        keep: Option<usize>,
        dry_run: bool,
    ) -> Result<Collected, ImageError> {
        if !dry_run {
            sync::store::clean::restore_aside(self.chunks.cache())?;
        }
        let retired = match keep {
            Some(k) => self.retire(k, !dry_run).await?,
            None => Retired::default(),
        };
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM gateway_layers"))
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing layers"))?;
        let mut referenced: HashSet<ChunkId> = HashSet::new();
        for l in rows.iter().filter_map(row_layer) {
            if retired
                .keys
                .contains(&(l.image.clone(), l.layer, l.owner.clone(), l.version))
            {
                continue;
            }
            let signed = Signed::verify(&l.signed, key)?;
            referenced.extend(signed.manifest.chunk_ids());
        }
        // Listed after the manifests were read: a chunk a build stores
        // now is either referenced by its version or recent.
        let loose = self.chunks.cache().loose_chunks()?;
        let cutoff = std::time::SystemTime::now()
            .checked_sub(grace)
            .unwrap_or(std::time::UNIX_EPOCH);
        let mut c = Collected {
            chunks: loose.len() as u64,
            versions_removed: retired.versions,
            ..Collected::default()
        };
        let mut gone = Vec::new();
        for (id, bytes, written) in loose {
            if referenced.contains(&id) {
                c.referenced += 1;
            } else if written > cutoff {
                c.recent += 1;
            } else if dry_run {
                c.removed += 1;
                c.removed_bytes += bytes;
            } else {
                match sync::store::clean::remove_loose_if_older(self.chunks.cache(), id, cutoff)? {
                    Some(bytes) => {
                        c.removed += 1;
                        c.removed_bytes += bytes;
                        gone.push(id);
                    }
                    None => c.recent += 1,
                }
            }
        }
        if self.chunks.remote_url().is_some() {
            let (r, removed) = self
                .chunks
                .collect_remote(&referenced, cutoff, dry_run)
                .await?;
            c.object_store = Some(r);
            // A device's upload is forgotten when the shared store loses
            // it, not when this gateway's cache does.
            gone = removed;
        }
        for batch in gone.chunks(500) {
            let marks: Vec<String> = (1..=batch.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "DELETE FROM gateway_uploads WHERE chunk_id IN ({})",
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for id in batch {
                q = q.bind(id.to_string());
            }
            // The table belongs to the device state; a gateway without it
            // has no uploads to forget.
            let _ = q.execute(&self.pool).await;
        }
        Ok(c)
    }
}

/// `image`: scan, store the chunks, sign and store the manifests, then write
/// the image's layer stages ([`stages_path`]). `progress` hears each file's
/// bytes.
pub async fn build(
    images: &Images,
    data: &Path,
    key: &ed25519_dalek::SigningKey,
    image: &str,
    layers: &[(Layer, PathBuf)],
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<Built>, ImageError> {
    check_image_name(image)?;
    let mut out = Vec::new();
    for (layer, dir) in layers {
        let (entries, stats) = sync::tree::scan(
            dir,
            images.chunks.cache(),
            sync::tree::Fidelity::of(*layer),
            progress,
        )?;
        // Shared before the version names them: a device that is offered
        // the version at any gateway finds every chunk.
        let ids: Vec<ChunkId> = entries
            .iter()
            .flat_map(|e| match &e.kind {
                sync::Kind::File { chunks, .. } => chunks.as_slice(),
                _ => &[],
            })
            .copied()
            .collect();
        images.chunks.publish(&ids).await?;
        let (stored, new) = images.commit(image, *layer, "", entries, key).await?;
        out.push(Built {
            layer: *layer,
            stored,
            new,
            stats,
        });
    }
    write_stages(images, data, image).await?;
    Ok(out)
}

/// Write the image's layer stages ([`stages_path`]) for the versions every
/// device is offered now.
pub async fn write_stages(
    images: &Images,
    data: &Path,
    image: &str,
) -> Result<PathBuf, ImageError> {
    let current = images.for_device(image, "").await?;
    let path = stages_path(data, image);
    let write = || -> Result<(), persist::FileError> {
        if let Some(p) = path.parent() {
            persist::file::create_dir_all(p)?;
        }
        persist::write_atomic(&path, layer_stages(image, &current).as_bytes())
    };
    write().map_err(|e| ImageError::Invalid(format!("{}: {e}", path.display())))?;
    Ok(path)
}

/// The boot-chain stages measuring an image's system layers (see
/// docs/boot-chain.md): one `data` stage per layer in PCR 13, whose bytes
/// name the layer and its manifest digest. Append them to the chain the
/// reference is predicted from; the client measures the layers it holds
/// the same way.
pub fn layer_stages(image: &str, layers: &[StoredLayer]) -> String {
    let digests: Vec<(Layer, String)> =
        layers.iter().map(|l| (l.layer, l.digest.clone())).collect();
    stages_toml(image, &digests)
}

pub use protocol::stages::{stage_data, stages_toml};

/// Where `satchel image build` writes an image's layer stages.
pub fn stages_path(data: &Path, image: &str) -> PathBuf {
    data.join("images").join(format!("{image}.stages.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_delta_is_made_once_per_pair_of_files_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("gw.db").display());
        let (pool, _) = persist::db::connect(&url).await.unwrap();
        let images = Images::open(pool, dir.path()).await.unwrap();
        let put = |bytes: &[u8]| {
            let id = ChunkId::of(bytes);
            images.chunks.cache().put(id, bytes).unwrap();
            id
        };
        let old: Vec<u8> = (0..15_000u32).flat_map(|i| (i * 7).to_le_bytes()).collect();
        let mut new = old.clone();
        new[12_345] ^= 1;
        let (old_id, new_id) = (put(&old), put(&new));
        let made = images.delta(&[old_id], &[new_id]).unwrap();
        assert_eq!(sync::delta::apply(&old, &made, new.len()).unwrap(), new);
        assert!(
            made.len() < 200,
            "a one-byte change gave a {}-byte delta",
            made.len()
        );
        assert_eq!(images.deltas_made(), 1);
        // Asked again (another device, another clone of the gateway's state):
        // the same bytes, not made again.
        let again = images.clone().delta(&[old_id], &[new_id]).unwrap();
        assert_eq!(again, made);
        assert_eq!(images.deltas_made(), 1);
        // Other files are another delta; the reverse direction too.
        assert!(images.delta(&[new_id], &[old_id]).is_some());
        assert_eq!(images.deltas_made(), 2);
        // A chunk the store lacks: no delta, and that answer is not kept.
        let later = b"arrives later".repeat(100);
        let later_id = ChunkId::of(&later);
        assert!(images.delta(&[later_id], &[new_id]).is_none());
        put(&later);
        assert!(images.delta(&[later_id], &[new_id]).is_some());
        assert_eq!(images.deltas_made(), 3);
    }
}
