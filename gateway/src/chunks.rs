//! The gateway's chunks: the data directory's chunk store (`DATA/chunks`),
//! and, when one is configured, an S3-compatible object store that every
//! gateway of the organisation shares (docs/scale.md).
//!
//! With an object store, it is the store of record and the data
//! directory's store is this gateway's cache in front of it:
//!
//! - a chunk stored here (an upload, a check-in, a build) is checked
//!   against its id, written to the cache, then made sure of in the object
//!   store before the request that brought it is answered: put where the
//!   store lacks it; where the store holds it whole, that object is kept
//!   (written again if older than [`REFRESH_AFTER`], so that a collection
//!   counts it as recent), never replaced by other bytes of the chunk;
//! - a version is stored only once every chunk it names is in the object
//!   store ([`Chunks::unshared`]);
//! - a chunk asked for is read from the cache, else fetched from the object
//!   store, checked against its id (a chunk altered in the bucket is an
//!   error, never content sent on) and kept in the cache;
//! - "is it stored?" asks the cache, then the object store.
//!
//! Objects are `PREFIX/ab/abcdef...`, the same zstd frames as the files of
//! a local store, one object per chunk (each at most
//! [`sync::chunk::MAX_CHUNK`] before compression, so a request never holds
//! a whole layer), and fetched chunks are written to the cache as they
//! arrive. At most 64 requests to the store are in flight from one gateway
//! (16 for one device's request). Requests are retried with backoff by the
//! client (`object_store`'s retry: 5 tries within 60 s).
//!
//! A prefix belongs to one database: the first gateway to use it writes the
//! database's id to `PREFIX/satchel-database`, and a gateway or command on
//! another database is refused, as is one without the object store on a
//! database that records one ([`crate::images::Images::open_with`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{StreamExt as _, TryStreamExt as _};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use sync::store::StoreError;
use sync::{ChunkId, ChunkStore};

/// Requests to the object store in flight at once, per operation.
const IN_FLIGHT: usize = 16;

/// A chunk problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// The local store (or a chunk that fails its check).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The object store, after its retries.
    #[error("object store {url}: {what}: {source}")]
    Remote {
        /// The store (`s3://bucket/prefix`).
        url: String,
        /// What was being done.
        what: String,
        /// The client's error.
        #[source]
        source: object_store::Error,
    },
    /// A configuration that names no usable store.
    #[error("chunk store: {0}")]
    Config(String),
}

/// Where the object store is and how to sign in to it: the gateway's
/// `chunk-store` settings (docs/gateway.md).
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteConfig {
    /// `s3://BUCKET[/PREFIX]`; the prefix defaults to `chunks`.
    pub url: String,
    /// The service's address (`http://127.0.0.1:8333` for a SeaweedFS or
    /// Garage of the branch); none for AWS itself.
    pub endpoint: Option<String>,
    /// The region (`us-east-1` unless given: what SeaweedFS and Garage accept).
    pub region: Option<String>,
    /// The access key id and secret; none to take them from the
    /// environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for RemoteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteConfig")
            .field("url", &self.url)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field(
                "access_key_id",
                &self.credentials.as_ref().map(|(id, _)| id),
            )
            .finish_non_exhaustive()
    }
}

/// The access key pair in a credentials file: TOML with `access-key-id` and
/// `secret-access-key`, kept apart from the configuration so that the
/// configuration may be readable by all.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct CredentialsFile {
    access_key_id: String,
    secret_access_key: String,
}

impl RemoteConfig {
    /// Read the access key pair from `path` (see [`CredentialsFile`]); a
    /// file others may read is refused.
    pub fn read_credentials(path: &std::path::Path) -> Result<(String, String), ChunkError> {
        use std::os::unix::fs::PermissionsExt as _;
        let bad = |e: String| ChunkError::Config(format!("credentials {}: {e}", path.display()));
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(bad(format!(
                "readable by others (mode {:o}): chmod 600 it",
                meta.permissions().mode() & 0o777
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let c: CredentialsFile = toml::from_str(&text).map_err(|e| bad(e.message().to_owned()))?;
        Ok((c.access_key_id, c.secret_access_key))
    }

    /// `s3://BUCKET/PREFIX` with the prefix spelled out: one spelling for
    /// the addresses that name the same objects (`s3://b`, `s3://b/`,
    /// `s3://b/chunks`).
    pub fn canonical(&self) -> Result<String, ChunkError> {
        let (bucket, prefix) = self.bucket_and_prefix()?;
        Ok(format!("s3://{bucket}/{prefix}"))
    }

    /// The bucket and the prefix of `url`.
    fn bucket_and_prefix(&self) -> Result<(String, ObjectPath), ChunkError> {
        let bad = |why: &str| {
            ChunkError::Config(format!(
                "{:?} {why}: write s3://BUCKET or s3://BUCKET/PREFIX",
                self.url
            ))
        };
        let url = url::Url::parse(&self.url).map_err(|e| bad(&e.to_string()))?;
        if url.scheme() != "s3" {
            return Err(bad("is not an s3:// address"));
        }
        let bucket = url
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| bad("names no bucket"))?;
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(bad("has more than a bucket and a prefix"));
        }
        let prefix = url.path().trim_matches('/');
        let prefix = if prefix.is_empty() { "chunks" } else { prefix };
        let prefix = ObjectPath::parse(prefix).map_err(|e| bad(&e.to_string()))?;
        Ok((bucket.to_owned(), prefix))
    }
}

/// The object store behind the cache.
#[derive(Debug)]
struct Remote {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
    /// Requests in flight to the store from this gateway, all told: what a
    /// burst of devices can make it ask at once.
    permits: tokio::sync::Semaphore,
}

/// What a chunk's object is, seen from this gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Object {
    Absent,
    /// Its size and when it was last written.
    Present(u64, SystemTime),
}

impl Object {
    /// Present, and written within [`REFRESH_AFTER`].
    fn fresh(self) -> bool {
        match self {
            Object::Absent => false,
            Object::Present(_, when) => SystemTime::now()
                .duration_since(when)
                .map_or(true, |age| age < REFRESH_AFTER),
        }
    }
}

impl Remote {
    fn connect(config: &RemoteConfig) -> Result<Remote, ChunkError> {
        use object_store::aws::AmazonS3Builder;
        let (bucket, prefix) = config.bucket_and_prefix()?;
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_region(config.region.as_deref().unwrap_or("us-east-1"))
            .with_retry(object_store::RetryConfig {
                max_retries: 5,
                retry_timeout: Duration::from_secs(60),
                ..object_store::RetryConfig::default()
            })
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(30)),
            );
        if let Some(e) = &config.endpoint {
            // A branch's own store: path-style addresses, and plain HTTP
            // only where the address says so.
            b = b
                .with_endpoint(e)
                .with_allow_http(e.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if let Some((id, secret)) = &config.credentials {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
        }
        let store = b.build().map_err(|source| ChunkError::Remote {
            url: config.url.clone(),
            what: "configuring the client".to_owned(),
            source,
        })?;
        Ok(Remote {
            store: Arc::new(store),
            prefix,
            url: config.url.clone(),
            permits: tokio::sync::Semaphore::new(GATEWAY_IN_FLIGHT),
        })
    }

    fn err(&self, what: impl Into<String>) -> impl FnOnce(object_store::Error) -> ChunkError + '_ {
        let what = what.into();
        move |source| ChunkError::Remote {
            url: self.url.clone(),
            what,
            source,
        }
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ChunkError> {
        self.permits
            .acquire()
            .await
            .map_err(|e| ChunkError::Config(format!("the request limit closed: {e}")))
    }

    fn path(&self, id: ChunkId) -> ObjectPath {
        let hex = id.to_string();
        self.prefix.child(&hex[..2]).child(hex)
    }

    /// The chunk's id from an object's path under the prefix, if it is one.
    fn id_of(&self, p: &ObjectPath) -> Option<ChunkId> {
        let mut parts = p.prefix_match(&self.prefix)?;
        let fan = parts.next()?;
        let name = parts.next()?;
        if parts.next().is_some() || !name.as_ref().starts_with(fan.as_ref()) {
            return None;
        }
        name.as_ref().parse().ok()
    }

    /// The chunk's object: absent, or its size and when it was written.
    async fn head(&self, id: ChunkId) -> Result<Object, ChunkError> {
        let _p = self.permit().await?;
        match self.store.head(&self.path(id)).await {
            Ok(m) => Ok(Object::Present(m.size, m.last_modified.into())),
            Err(object_store::Error::NotFound { .. }) => Ok(Object::Absent),
            Err(e) => Err(self.err(format!("looking for chunk {id}"))(e)),
        }
    }

    /// The object's bytes, unchecked; `None` if there is none.
    async fn get(&self, id: ChunkId) -> Result<Option<bytes::Bytes>, ChunkError> {
        let _p = self.permit().await?;
        let got = match self.store.get(&self.path(id)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.err(format!("reading chunk {id}"))(e)),
        };
        // A chunk's object is small (one compressed chunk); anything
        // larger than a chunk could be is not one.
        let most = u64::from(sync::chunk::MAX_CHUNK) + 1024;
        if got.meta.size > most {
            return Err(ChunkError::Store(StoreError::Corrupt {
                id,
                problem: format!("its object in {} is {} bytes", self.url, got.meta.size),
            }));
        }
        got.bytes()
            .await
            .map(Some)
            .map_err(self.err(format!("reading chunk {id}")))
    }

    /// The object's bytes if they check out against `id`; `None` if there
    /// is none or they do not (a damaged or planted object).
    async fn get_checked(&self, id: ChunkId) -> Result<Option<Vec<u8>>, ChunkError> {
        let Some(b) = self.get(id).await? else {
            return Ok(None);
        };
        let bytes = b.to_vec();
        let check =
            tokio::task::spawn_blocking(move || sync::store::open_chunk(id, &bytes).map(|_| bytes))
                .await
                .map_err(stopped)?;
        Ok(check.ok())
    }

    async fn put(&self, id: ChunkId, compressed: Vec<u8>) -> Result<(), ChunkError> {
        let _p = self.permit().await?;
        self.store
            .put(&self.path(id), PutPayload::from(compressed))
            .await
            .map(|_| ())
            .map_err(self.err(format!("storing chunk {id}")))
    }

    /// Make sure the store holds `id`, written within [`REFRESH_AFTER`]:
    /// `ours` (checked bytes) where it has none; where it has one, that
    /// one written again (so a collection counts it as recent) if it is
    /// older, unless it is damaged, when ours replace it. An object found
    /// whole is never replaced by other bytes of the same chunk (a device
    /// cannot swap the shared copy for a larger encoding of its own).
    async fn share(&self, id: ChunkId, ours: Option<Vec<u8>>) -> Result<bool, ChunkError> {
        let seen = self.head(id).await?;
        if seen.fresh() {
            return Ok(true);
        }
        let theirs = match seen {
            Object::Absent => None,
            Object::Present(..) => self.get_checked(id).await?,
        };
        let bytes = match theirs {
            Some(b) => Some(b),
            // Ours are checked too: bytes read back from the cache unchecked,
            // or a device's frame for a chunk the cache held already.
            None => match ours {
                Some(b) => tokio::task::spawn_blocking(move || {
                    sync::store::open_chunk(id, &b).ok().map(|_| b)
                })
                .await
                .map_err(stopped)?,
                None => None,
            },
        };
        match bytes {
            Some(bytes) => {
                self.put(id, bytes).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// An object written longer ago than this is written again when a build,
/// an upload or a roll-back uses its chunk, so that a collection (whose
/// grace period must be longer: 24 h by default) counts it as recent.
pub const REFRESH_AFTER: Duration = Duration::from_secs(3600);

/// Requests in flight to the object store from one gateway, all told.
const GATEWAY_IN_FLIGHT: usize = 64;

/// Each of `ids` once.
fn distinct(ids: &[ChunkId]) -> Vec<ChunkId> {
    let mut seen = HashSet::new();
    ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}

fn stopped(e: tokio::task::JoinError) -> ChunkError {
    ChunkError::Config(format!("a task stopped: {e}"))
}

/// The gateway's chunks: the local store, and the shared object store if
/// one is configured (see the module's documentation).
#[derive(Debug, Clone)]
pub struct Chunks {
    local: ChunkStore,
    remote: Option<Arc<Remote>>,
}

/// What [`Chunks::collect_remote`] found and did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RemoteCollected {
    /// Chunk objects in the store.
    pub chunks: u64,
    /// Of those, referenced (kept).
    pub referenced: u64,
    /// Unreferenced but written within the grace period (kept).
    pub recent: u64,
    /// Unreferenced and older: removed (or, in a dry run, to remove).
    pub removed: u64,
    /// Their bytes.
    pub removed_bytes: u64,
}

/// The object naming the database a prefix's chunks belong to.
const OWNER: &str = "satchel-database";

impl Chunks {
    /// Only the local store (the embedded default).
    pub fn local(local: ChunkStore) -> Chunks {
        Chunks {
            local,
            remote: None,
        }
    }

    /// The local store as a cache in front of the object store `config`
    /// names. The store is asked for one object first, so that a wrong
    /// address, bucket or key pair is told now, not at a device's pull.
    pub async fn with_remote(self, config: &RemoteConfig) -> Result<Chunks, ChunkError> {
        let remote = Remote::connect(config)?;
        let probe = remote.prefix.child(OWNER);
        match remote.store.head(&probe).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(remote.err("signing in")(e)),
        }
        Ok(Chunks {
            remote: Some(Arc::new(remote)),
            ..self
        })
    }

    /// Tie the object store's prefix to the database `database` (an id
    /// kept in it): the first to use the prefix writes the id there; any
    /// other database is refused, so that a collection run against another
    /// database (a staging one, a fresh SQLite file) never removes chunks
    /// this one's versions name.
    pub async fn claim(&self, database: &str) -> Result<(), ChunkError> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let path = remote.prefix.child(OWNER);
        let owner = match remote.store.get(&path).await {
            Ok(g) => {
                let b = g.bytes().await.map_err(remote.err("reading the owner"))?;
                String::from_utf8_lossy(&b).trim().to_owned()
            }
            Err(object_store::Error::NotFound { .. }) => {
                remote
                    .store
                    .put(
                        &path,
                        PutPayload::from(format!("{database}\n").into_bytes()),
                    )
                    .await
                    .map_err(remote.err("writing the owner"))?;
                return Ok(());
            }
            Err(e) => return Err(remote.err("reading the owner")(e)),
        };
        if owner != database {
            return Err(ChunkError::Config(format!(
                "{} holds the chunks of another database ({owner}; this one is {database}): \
                 give this database's --db, or another prefix",
                remote.url
            )));
        }
        Ok(())
    }

    /// The local store (the cache, with an object store): a build scans
    /// into it, then [`publish`](Self::publish)es.
    pub fn cache(&self) -> &ChunkStore {
        &self.local
    }

    /// The object store's address, if there is one.
    pub fn remote_url(&self) -> Option<&str> {
        self.remote.as_deref().map(|r| r.url.as_str())
    }

    /// Those of `ids` this gateway's cache lacks.
    async fn not_cached(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>, ChunkError> {
        let (local, ids) = (self.local.clone(), ids.to_vec());
        tokio::task::spawn_blocking(move || {
            let mut seen = HashSet::new();
            ids.into_iter()
                .filter(|id| seen.insert(*id) && !local.has(*id))
                .collect()
        })
        .await
        .map_err(stopped)
    }

    /// Those of `ids` stored nowhere (neither here nor in the object store).
    pub async fn missing(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>, ChunkError> {
        let here_not = self.not_cached(ids).await?;
        let Some(remote) = &self.remote else {
            return Ok(here_not);
        };
        let found: Vec<(ChunkId, Object)> = futures::stream::iter(here_not)
            .map(|id| {
                let remote = Arc::clone(remote);
                async move { Ok::<_, ChunkError>((id, remote.head(id).await?)) }
            })
            .buffered(IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(found
            .into_iter()
            .filter(|(_, o)| *o == Object::Absent)
            .map(|(id, _)| id)
            .collect())
    }

    /// Those of `ids` the object store cannot give: for a version about to
    /// be stored, which every gateway must be able to serve. An object
    /// older than [`REFRESH_AFTER`] is written again ([`Remote::share`]);
    /// a chunk the store lacks or holds damaged, but this gateway's cache
    /// holds, is put there from the cache. Without an object store, those
    /// the local store lacks.
    pub async fn unshared(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>, ChunkError> {
        let Some(remote) = &self.remote else {
            return self.not_cached(ids).await;
        };
        let unique = distinct(ids);
        let lacking: Vec<Option<ChunkId>> = futures::stream::iter(unique)
            .map(|id| {
                let (remote, local) = (Arc::clone(remote), self.local.clone());
                async move {
                    if remote.head(id).await?.fresh() {
                        return Ok(None);
                    }
                    let ours = tokio::task::spawn_blocking(move || local.get_compressed(id).ok())
                        .await
                        .map_err(stopped)?;
                    Ok::<_, ChunkError>((!remote.share(id, ours).await?).then_some(id))
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(lacking.into_iter().flatten().collect())
    }

    /// Bring those of `ids` the cache lacks from the object store, each
    /// checked against its id and written to the cache as it arrives (at
    /// most [`IN_FLIGHT`] held at once), then make them durable. Chunks
    /// the object store lacks are left out: reading them from
    /// [`cache`](Self::cache) then says so. One that fails its check is an
    /// error, and is not kept.
    pub async fn fill(&self, ids: &[ChunkId]) -> Result<(), ChunkError> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let want = self.not_cached(ids).await?;
        if want.is_empty() {
            return Ok(());
        }
        futures::stream::iter(want)
            .map(|id| {
                let remote = Arc::clone(remote);
                async move { Ok::<_, ChunkError>((id, remote.get(id).await?)) }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_for_each(|(id, bytes)| {
                let local = self.local.clone();
                async move {
                    let Some(b) = bytes else { return Ok(()) };
                    tokio::task::spawn_blocking(move || {
                        // Checked here: an altered object is refused, and
                        // never kept.
                        local.put_compressed(id, &b).map(|_| ())
                    })
                    .await
                    .map_err(stopped)?
                    .map_err(ChunkError::from)
                }
            })
            .await?;
        let local = self.local.clone();
        tokio::task::spawn_blocking(move || local.sync())
            .await
            .map_err(stopped)??;
        Ok(())
    }

    /// Store chunks received compressed: each is checked against its id
    /// (a bad one stops the batch with [`StoreError::Corrupt`] before
    /// anything of it is shared), written durably here, and made sure of
    /// in the object store (see [`Remote::share`]: a whole object there is
    /// kept, not replaced by these bytes). For each, whether it was new
    /// here.
    pub async fn put_compressed(
        &self,
        frames: Vec<(ChunkId, Vec<u8>)>,
    ) -> Result<Vec<(ChunkId, bool)>, ChunkError> {
        let local = self.local.clone();
        let (news, frames) = tokio::task::spawn_blocking(move || {
            let mut news = Vec::with_capacity(frames.len());
            for (id, bytes) in &frames {
                // Every frame checked, the cache holding its chunk or not:
                // a bad one is refused whole, never shared.
                sync::store::open_chunk(*id, bytes)?;
                news.push((*id, local.put_compressed(*id, bytes)?));
            }
            local.sync()?;
            Ok::<_, ChunkError>((news, frames))
        })
        .await
        .map_err(stopped)??;
        if let Some(remote) = &self.remote {
            futures::stream::iter(frames)
                .map(|(id, bytes)| {
                    let remote = Arc::clone(remote);
                    async move { remote.share(id, Some(bytes)).await.map(|_| ()) }
                })
                .buffer_unordered(IN_FLIGHT)
                .try_collect::<Vec<()>>()
                .await?;
        }
        Ok(news)
    }

    /// Make sure the object store holds every one of `ids` (stored in the
    /// cache: a build's), written within [`REFRESH_AFTER`] (see
    /// [`unshared`](Self::unshared)); one neither holds is an error.
    pub async fn publish(&self, ids: &[ChunkId]) -> Result<(), ChunkError> {
        if self.remote.is_none() {
            return Ok(());
        }
        match self.unshared(ids).await?.first() {
            Some(id) => Err(ChunkError::Store(StoreError::Missing(*id))),
            None => Ok(()),
        }
    }

    /// For a version published again from chunks already stored: the
    /// first of `ids` stored nowhere, if any. Each is made fresh where it
    /// is (the cache file's time made now; the object written again if
    /// older than [`REFRESH_AFTER`], from the cache where it holds the
    /// chunk: [`unshared`](Self::unshared)), so that a collection running
    /// meanwhile counts it as recent.
    pub async fn keep_fresh(&self, ids: &[ChunkId]) -> Result<Option<ChunkId>, ChunkError> {
        let (local, list) = (self.local.clone(), distinct(ids));
        tokio::task::spawn_blocking(move || {
            for id in list {
                local.keep_fresh(id);
            }
        })
        .await
        .map_err(stopped)?;
        Ok(self.unshared(ids).await?.first().copied())
    }

    /// Remove from the object store every chunk object not in `referenced`
    /// and written before `cutoff`. An object is looked at again just
    /// before it is removed, and kept if it was written since (a build,
    /// an upload or a roll-back at any gateway writes again an object
    /// older than [`REFRESH_AFTER`] that it uses). Objects under the prefix
    /// that are not chunks are left alone. Returns the counts and the
    /// chunks removed.
    pub async fn collect_remote(
        &self,
        referenced: &HashSet<ChunkId>,
        cutoff: SystemTime,
        dry_run: bool,
    ) -> Result<(RemoteCollected, Vec<ChunkId>), ChunkError> {
        let mut c = RemoteCollected::default();
        let mut gone = Vec::new();
        let Some(remote) = &self.remote else {
            return Ok((c, gone));
        };
        let listed: Vec<object_store::ObjectMeta> = remote
            .store
            .list(Some(&remote.prefix))
            .try_collect()
            .await
            .map_err(remote.err("listing chunks"))?;
        for meta in listed {
            let Some(id) = remote.id_of(&meta.location) else {
                continue;
            };
            c.chunks += 1;
            if referenced.contains(&id) {
                c.referenced += 1;
                continue;
            }
            if SystemTime::from(meta.last_modified) > cutoff {
                c.recent += 1;
                continue;
            }
            if !dry_run {
                match remote.head(id).await? {
                    Object::Present(_, w) if w > cutoff => {
                        c.recent += 1;
                        continue;
                    }
                    Object::Absent => continue,
                    Object::Present(..) => {}
                }
                match remote.store.delete(&meta.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(remote.err(format!("removing chunk {id}"))(e)),
                }
                gone.push(id);
            }
            c.removed += 1;
            c.removed_bytes += meta.size;
        }
        Ok((c, gone))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> RemoteConfig {
        RemoteConfig {
            url: url.to_owned(),
            endpoint: None,
            region: None,
            credentials: None,
        }
    }

    #[test]
    fn an_address_names_a_bucket_and_a_prefix() {
        let (b, p) = config("s3://school-chunks").bucket_and_prefix().unwrap();
        assert_eq!((b.as_str(), p.as_ref()), ("school-chunks", "chunks"));
        let (b, p) = config("s3://org/region-1/chunks/")
            .bucket_and_prefix()
            .unwrap();
        assert_eq!((b.as_str(), p.as_ref()), ("org", "region-1/chunks"));
        for wrong in [
            "https://org/chunks",
            "s3:///chunks",
            "s3://org/c?x=1",
            "s3://user@org/c",
            "not an address",
        ] {
            let e = config(wrong).bucket_and_prefix().unwrap_err().to_string();
            assert!(e.contains("s3://BUCKET"), "{wrong}: {e}");
        }
    }

    #[test]
    fn object_paths_and_ids_go_both_ways_and_nothing_else_is_a_chunk() {
        let remote = Remote {
            store: Arc::new(object_store::memory::InMemory::new()),
            prefix: ObjectPath::parse("org/chunks").unwrap(),
            url: "s3://b/org/chunks".to_owned(),
            permits: tokio::sync::Semaphore::new(1),
        };
        let id = ChunkId::of(b"a chunk");
        let p = remote.path(id);
        assert_eq!(
            p.as_ref(),
            format!("org/chunks/{}/{id}", &id.to_string()[..2])
        );
        assert_eq!(remote.id_of(&p), Some(id));
        for other in [
            "org/chunks/satchel-database".to_owned(),
            format!("org/chunks/zz/{id}"),
            format!("org/chunks/{}/{id}/x", &id.to_string()[..2]),
            format!("org/other/{}/{id}", &id.to_string()[..2]),
        ] {
            assert_eq!(
                remote.id_of(&ObjectPath::parse(&other).unwrap()),
                None,
                "{other}"
            );
        }
    }

    #[test]
    fn credentials_others_can_read_are_refused_and_the_secret_is_never_printed() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s3.credentials");
        std::fs::write(
            &f,
            "access-key-id = \"AK\"\nsecret-access-key = \"s3cr3t\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = RemoteConfig::read_credentials(&f).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let pair = RemoteConfig::read_credentials(&f).unwrap();
        assert_eq!(pair, ("AK".to_owned(), "s3cr3t".to_owned()));
        let c = RemoteConfig {
            credentials: Some(pair),
            ..config("s3://b")
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("AK") && !shown.contains("s3cr3t"), "{shown}");
        std::fs::write(&f, "access-key-id = \"AK\"\n").unwrap();
        let e = RemoteConfig::read_credentials(&f).unwrap_err().to_string();
        assert!(e.contains("secret-access-key"), "{e}");
    }
}
