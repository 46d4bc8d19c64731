//! The gateway's chunks: the data directory's chunk store (`DATA/chunks`),
//! and, when one is configured, an S3-compatible object store that every
//! gateway of the organisation shares (docs/scale.md).
//!
//! With an object store, it is the store of record and the data
//! directory's store is this gateway's cache in front of it:
//!
//! - a chunk stored here (an upload, a check-in, a build) is checked
//!   against its id, written to the cache, then put in the object store
//!   before the request that brought it is answered;
//! - a chunk asked for is read from the cache, else fetched from the object
//!   store, checked against its id (a chunk altered in the bucket is an
//!   error, never content sent on) and kept in the cache;
//! - "is it stored?" asks the cache, then the object store.
//!
//! Objects are `PREFIX/ab/abcdef...`, the same zstd frames as the files of
//! a local store, one object per chunk (each at most
//! [`sync::chunk::MAX_CHUNK`] before compression, so a request never holds
//! a whole layer). Requests are retried with backoff by the client
//! (`object_store`'s retry: 5 tries within 60 s).

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

    /// When the object was last written; `None` if there is none.
    async fn written(&self, id: ChunkId) -> Result<Option<SystemTime>, ChunkError> {
        match self.store.head(&self.path(id)).await {
            Ok(m) => Ok(Some(m.last_modified.into())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(format!("looking for chunk {id}"))(e)),
        }
    }

    async fn get(&self, id: ChunkId) -> Result<Option<bytes::Bytes>, ChunkError> {
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

    async fn put(&self, id: ChunkId, compressed: Vec<u8>) -> Result<(), ChunkError> {
        self.store
            .put(&self.path(id), PutPayload::from(compressed))
            .await
            .map(|_| ())
            .map_err(self.err(format!("storing chunk {id}")))
    }
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
        let probe = remote.prefix.child("probe");
        match remote.store.head(&probe).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(remote.err("signing in")(e)),
        }
        Ok(Chunks {
            remote: Some(Arc::new(remote)),
            ..self
        })
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

    /// Those of `ids` stored nowhere (neither here nor in the object store).
    pub async fn missing(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>, ChunkError> {
        let local = self.local.clone();
        let here_not: Vec<ChunkId> = {
            let ids = ids.to_vec();
            tokio::task::spawn_blocking(move || {
                ids.into_iter().filter(|id| !local.has(*id)).collect()
            })
            .await
            .map_err(|e| ChunkError::Config(format!("a task stopped: {e}")))?
        };
        let Some(remote) = &self.remote else {
            return Ok(here_not);
        };
        let found: Vec<(ChunkId, bool)> = futures::stream::iter(here_not)
            .map(|id| {
                let remote = Arc::clone(remote);
                async move { Ok::<_, ChunkError>((id, remote.written(id).await?.is_some())) }
            })
            .buffered(IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(found
            .into_iter()
            .filter(|(_, there)| !there)
            .map(|(id, _)| id)
            .collect())
    }

    /// Whether `id` is stored (here or in the object store).
    pub async fn has(&self, id: ChunkId) -> Result<bool, ChunkError> {
        Ok(self.missing(&[id]).await?.is_empty())
    }

    /// Bring those of `ids` the cache lacks from the object store, each
    /// checked against its id, and make them durable in the cache. Chunks
    /// the object store lacks too are left out: reading them from
    /// [`cache`](Self::cache) then says so.
    pub async fn fill(&self, ids: &[ChunkId]) -> Result<(), ChunkError> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let want: Vec<ChunkId> = {
            let mut seen = HashSet::new();
            ids.iter()
                .copied()
                .filter(|id| seen.insert(*id) && !self.local.has(*id))
                .collect()
        };
        if want.is_empty() {
            return Ok(());
        }
        let fetched: Vec<(ChunkId, Option<bytes::Bytes>)> = futures::stream::iter(want)
            .map(|id| {
                let remote = Arc::clone(remote);
                async move { Ok::<_, ChunkError>((id, remote.get(id).await?)) }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect()
            .await?;
        let local = self.local.clone();
        tokio::task::spawn_blocking(move || -> Result<(), ChunkError> {
            for (id, bytes) in fetched {
                if let Some(b) = bytes {
                    // Checked here: an object altered in the bucket is
                    // refused, and never kept.
                    local.put_compressed(id, &b)?;
                }
            }
            local.sync()?;
            Ok(())
        })
        .await
        .map_err(|e| ChunkError::Config(format!("a task stopped: {e}")))?
    }

    /// Store chunks received compressed: each is checked against its id
    /// (a bad one stops the batch with [`StoreError::Corrupt`] before
    /// anything of it is shared), written durably here, and put in the
    /// object store. For each, whether it was new.
    pub async fn put_compressed(
        &self,
        frames: Vec<(ChunkId, Vec<u8>)>,
    ) -> Result<Vec<(ChunkId, bool)>, ChunkError> {
        let local = self.local.clone();
        let (news, frames) = tokio::task::spawn_blocking(move || {
            let mut news = Vec::with_capacity(frames.len());
            for (id, bytes) in &frames {
                news.push((*id, local.put_compressed(*id, bytes)?));
            }
            local.sync()?;
            Ok::<_, ChunkError>((news, frames))
        })
        .await
        .map_err(|e| ChunkError::Config(format!("a task stopped: {e}")))??;
        if let Some(remote) = &self.remote {
            // New here, or here but perhaps never shared (a cache that
            // outlived an object store's loss): put where the store lacks it.
            let news_only: Vec<bool> = news.iter().map(|(_, new)| *new).collect();
            futures::stream::iter(frames.into_iter().zip(news_only))
                .map(|((id, bytes), new)| {
                    let remote = Arc::clone(remote);
                    async move {
                        if new || remote.written(id).await?.is_none() {
                            remote.put(id, bytes).await?;
                        }
                        Ok::<_, ChunkError>(())
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .try_collect::<Vec<()>>()
                .await?;
        }
        Ok(news)
    }

    /// Put every one of `ids` (stored in the cache: a build's) in the
    /// object store where it lacks them. Returns how many were put.
    pub async fn publish(&self, ids: &[ChunkId]) -> Result<u64, ChunkError> {
        let Some(remote) = &self.remote else {
            return Ok(0);
        };
        let unique: Vec<ChunkId> = ids
            .iter()
            .copied()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let put: Vec<bool> = futures::stream::iter(unique)
            .map(|id| {
                let remote = Arc::clone(remote);
                let local = self.local.clone();
                async move {
                    if remote.written(id).await?.is_some() {
                        return Ok(false);
                    }
                    let bytes = tokio::task::spawn_blocking(move || local.get_compressed(id))
                        .await
                        .map_err(|e| ChunkError::Config(format!("a task stopped: {e}")))??;
                    remote.put(id, bytes).await?;
                    Ok::<_, ChunkError>(true)
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(put.into_iter().filter(|p| *p).count() as u64)
    }

    /// Whether `id` is stored, and if so, written anew where it is, so that
    /// a collection running meanwhile counts it as recent: for a version
    /// published again from chunks already stored. In the object store, an
    /// object older than a minute is written again from the cache or from
    /// itself.
    pub async fn keep_fresh(&self, id: ChunkId) -> Result<bool, ChunkError> {
        let here = self.local.keep_fresh(id);
        let Some(remote) = &self.remote else {
            return Ok(here);
        };
        let Some(written) = remote.written(id).await? else {
            if here {
                remote.put(id, self.local.get_compressed(id)?).await?;
            }
            return Ok(here);
        };
        let stale = SystemTime::now()
            .duration_since(written)
            .is_ok_and(|age| age > Duration::from_secs(60));
        if stale {
            let bytes = match remote.get(id).await? {
                Some(b) => b.to_vec(),
                None => return Ok(here),
            };
            sync::store::open_chunk(id, &bytes)?;
            remote.put(id, bytes).await?;
        }
        Ok(true)
    }

    /// Remove from the object store every chunk object not in `referenced`
    /// and written before `cutoff`. An object is looked at again just
    /// before it is removed, and kept if it was written since (stored again
    /// by a build or a check-in at any gateway). Objects under the prefix
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
                match remote.written(id).await? {
                    Some(w) if w > cutoff => {
                        c.recent += 1;
                        continue;
                    }
                    None => continue,
                    Some(_) => {}
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
        };
        let id = ChunkId::of(b"a chunk");
        let p = remote.path(id);
        assert_eq!(
            p.as_ref(),
            format!("org/chunks/{}/{id}", &id.to_string()[..2])
        );
        assert_eq!(remote.id_of(&p), Some(id));
        for other in [
            "org/chunks/probe".to_owned(),
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
