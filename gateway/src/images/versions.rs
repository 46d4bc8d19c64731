//! Which devices have which layer versions, pins, roll-backs, and the
//! retention of old versions.
//!
//! - **Marks** (`gateway_device_layers`): at every offer the gateway notes,
//!   per device and layer, the version it offered and the version the
//!   device said it holds. The console shows them; retention keeps them.
//! - **Pins** (`gateway_pins`): a system layer held at a version for one
//!   device, or for every device (`device_id` `""`); a device's own pin
//!   wins. A device never takes a version older than the one it holds (it
//!   refuses it as a rollback), so a pin stops an update; it does not undo
//!   one.
//! - **Roll-back**: an older version's files published again as a new
//!   version, signed now. Devices take it as any update.
//! - **Retention**: past the newest `keep` versions of each layer (and
//!   owner), a version goes unless it is pinned, or some device was last
//!   offered it or last said it holds it (its next check-in merges against
//!   the version it holds; a pull in progress fetches the one offered).

use std::collections::{BTreeMap, HashSet};

use sqlx::Row;
use sync::manifest::{Layer, Signed};
use sync::ChunkId;

use super::{db, row_layer, ImageError, Images, StoredLayer, COLUMNS};

/// A version a device was offered, or said it holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Mark {
    /// The device.
    pub device_id: String,
    /// The layer.
    pub layer: Layer,
    /// `"held"` or `"offered"`.
    pub role: String,
    /// The version.
    pub version: u64,
    /// Its digest.
    pub digest: String,
    /// When (ms since the epoch).
    pub at_ms: i64,
}

/// A pin.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pin {
    /// The layer.
    pub layer: Layer,
    /// The device, or `""` for every device.
    pub device_id: String,
    /// The version it is held at.
    pub version: u64,
    /// The admin who set it.
    pub admin: String,
    /// When (ms since the epoch).
    pub set_ms: i64,
}

/// The versions a retention pass removes (or would).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Retired {
    /// `image/layer/version` (and `@device` for a device's own version).
    pub versions: Vec<String>,
    /// Them as (image, layer, owner, version).
    #[serde(skip)]
    pub keys: HashSet<(String, Layer, String, u64)>,
}

pub(super) const DDL: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS gateway_device_layers (device_id TEXT NOT NULL, image TEXT NOT NULL, \
     layer TEXT NOT NULL, role TEXT NOT NULL, version BIGINT NOT NULL, digest TEXT NOT NULL, \
     at_ms BIGINT NOT NULL, PRIMARY KEY (device_id, image, layer, role))",
    "CREATE TABLE IF NOT EXISTS gateway_pins (image TEXT NOT NULL, layer TEXT NOT NULL, \
     device_id TEXT NOT NULL, version BIGINT NOT NULL, admin TEXT NOT NULL, set_ms BIGINT NOT NULL, \
     PRIMARY KEY (image, layer, device_id))",
];

fn v64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Images {
    /// Note what `device` was offered of `image` and which of those
    /// versions' layers it said it holds.
    pub async fn mark(
        &self,
        device: &str,
        image: &str,
        offered: &[StoredLayer],
        held: &[StoredLayer],
    ) -> Result<(), ImageError> {
        let now = audit::batch::now_ms();
        // Held first, in one transaction: a collection reading the marks
        // never sees what was offered without what is held.
        let mut tx = self.pool.begin().await.map_err(db("beginning"))?;
        for (role, layers) in [("held", held), ("offered", offered)] {
            for l in layers {
                sqlx::query(
                    "INSERT INTO gateway_device_layers (device_id, image, layer, role, version, digest, at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (device_id, image, layer, role) \
                     DO UPDATE SET version = excluded.version, digest = excluded.digest, at_ms = excluded.at_ms",
                )
                .bind(device.to_owned())
                .bind(image.to_owned())
                .bind(l.layer.as_str().to_owned())
                .bind(role)
                .bind(v64(l.version))
                .bind(l.digest.clone())
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db("noting a device's layer versions"))?;
            }
        }
        tx.commit().await.map_err(db("committing"))?;
        Ok(())
    }

    /// Every device's marks on `image`.
    pub async fn marks(&self, image: &str) -> Result<Vec<Mark>, ImageError> {
        let rows = sqlx::query(
            "SELECT device_id, layer, role, version, digest, at_ms FROM gateway_device_layers \
             WHERE image = $1 ORDER BY device_id, layer, role",
        )
        .bind(image.to_owned())
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading devices' layer versions"))?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(Mark {
                    device_id: r.try_get(0).ok()?,
                    layer: r.try_get::<String, _>(1).ok()?.parse().ok()?,
                    role: r.try_get(2).ok()?,
                    version: u64::try_from(r.try_get::<i64, _>(3).ok()?).ok()?,
                    digest: r.try_get(4).ok()?,
                    at_ms: r.try_get(5).ok()?,
                })
            })
            .collect())
    }

    /// The versions `device` was last offered of `image` (a pull in
    /// progress fetches their chunks).
    pub async fn offered_to(
        &self,
        device: &str,
        image: &str,
    ) -> Result<Vec<StoredLayer>, ImageError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM gateway_layers l WHERE image = $1 AND EXISTS (SELECT 1 FROM \
             gateway_device_layers m WHERE m.device_id = $2 AND m.image = l.image AND \
             m.layer = l.layer AND m.role = 'offered' AND m.digest = l.digest)"
        ))
        .bind(image.to_owned())
        .bind(device.to_owned())
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading the versions offered"))?;
        Ok(rows.iter().filter_map(row_layer).collect())
    }

    /// The pins on `image`.
    pub async fn pins(&self, image: &str) -> Result<Vec<Pin>, ImageError> {
        let rows = sqlx::query(
            "SELECT layer, device_id, version, admin, set_ms FROM gateway_pins WHERE image = $1 \
             ORDER BY layer, device_id",
        )
        .bind(image.to_owned())
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading pins"))?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(Pin {
                    layer: r.try_get::<String, _>(0).ok()?.parse().ok()?,
                    device_id: r.try_get(1).ok()?,
                    version: u64::try_from(r.try_get::<i64, _>(2).ok()?).ok()?,
                    admin: r.try_get(3).ok()?,
                    set_ms: r.try_get(4).ok()?,
                })
            })
            .collect())
    }

    /// The version `device` is pinned to for `layer` of `image`, if any:
    /// its own pin, else the pin for every device. A pin whose version is
    /// gone is an error (never the newest version: that is what the pin
    /// held back). A device that already holds a newer version than its
    /// pin is not held (it would refuse the older one as a rollback, and
    /// its whole sync with it): a pin holds back, it never takes back.
    pub(super) async fn pinned(
        &self,
        image: &str,
        layer: Layer,
        device: &str,
    ) -> Result<Option<StoredLayer>, ImageError> {
        let pin = sqlx::query(
            "SELECT version FROM gateway_pins WHERE image = $1 AND layer = $2 \
             AND device_id IN ($3, '') ORDER BY length(device_id) DESC LIMIT 1",
        )
        .bind(image.to_owned())
        .bind(layer.as_str().to_owned())
        .bind(device.to_owned())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a pin"))?;
        let Some(pin) = pin else {
            return Ok(None);
        };
        let version =
            u64::try_from(pin.try_get::<i64, _>(0).map_err(db("reading a pin"))?).unwrap_or(0);
        if !device.is_empty() {
            let held: Option<i64> = sqlx::query_scalar(
                "SELECT version FROM gateway_device_layers WHERE device_id = $1 AND image = $2 \
                 AND layer = $3 AND role = 'held'",
            )
            .bind(device.to_owned())
            .bind(image.to_owned())
            .bind(layer.as_str().to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a device's layer versions"))?;
            if held.is_some_and(|h| h > v64(version)) {
                return Ok(None);
            }
        }
        match self.version(image, layer, "", version).await? {
            Some(l) => Ok(Some(l)),
            None => Err(ImageError::Invalid(format!(
                "{image}/{layer} is pinned at version {version}, which is no longer stored: unpin it"
            ))),
        }
    }

    /// Hold system layer `layer` of `image` at `version` for `device` (`""`:
    /// every device). The version must exist.
    pub async fn pin(
        &self,
        image: &str,
        layer: Layer,
        device: &str,
        version: u64,
        admin: &str,
    ) -> Result<StoredLayer, ImageError> {
        if !layer.is_system() {
            return Err(ImageError::Invalid(format!(
                "{layer} is a user layer: each device has its own versions; only base-os and group-apps are pinned"
            )));
        }
        let Some(stored) = self.version(image, layer, "", version).await? else {
            return Err(ImageError::Invalid(format!(
                "{image}/{layer} has no version {version} (see `satchel image versions`)"
            )));
        };
        sqlx::query(
            "INSERT INTO gateway_pins (image, layer, device_id, version, admin, set_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (image, layer, device_id) \
             DO UPDATE SET version = excluded.version, admin = excluded.admin, set_ms = excluded.set_ms",
        )
        .bind(image.to_owned())
        .bind(layer.as_str().to_owned())
        .bind(device.to_owned())
        .bind(v64(version))
        .bind(admin.to_owned())
        .bind(audit::batch::now_ms())
        .execute(&self.pool)
        .await
        .map_err(db("storing a pin"))?;
        Ok(stored)
    }

    /// Remove a pin; whether there was one.
    pub async fn unpin(&self, image: &str, layer: Layer, device: &str) -> Result<bool, ImageError> {
        let r = sqlx::query(
            "DELETE FROM gateway_pins WHERE image = $1 AND layer = $2 AND device_id = $3",
        )
        .bind(image.to_owned())
        .bind(layer.as_str().to_owned())
        .bind(device.to_owned())
        .execute(&self.pool)
        .await
        .map_err(db("removing a pin"))?;
        Ok(r.rows_affected() > 0)
    }

    /// Publish the files of `version` of system layer `layer` again, as a
    /// new version signed with `key`. Every chunk must still be stored.
    pub async fn roll_back(
        &self,
        image: &str,
        layer: Layer,
        version: u64,
        key: &ed25519_dalek::SigningKey,
    ) -> Result<StoredLayer, ImageError> {
        if !layer.is_system() {
            return Err(ImageError::Invalid(format!(
                "{layer} is a user layer: each device has its own versions; only base-os and group-apps roll back"
            )));
        }
        let Some(old) = self.version(image, layer, "", version).await? else {
            return Err(ImageError::Invalid(format!(
                "{image}/{layer} has no version {version} (see `satchel image versions`)"
            )));
        };
        let signed = Signed::verify(&old.signed, &key.verifying_key())?;
        // Each chunk's time made now, so a collection running meanwhile
        // keeps it (as a build's chunks).
        let ids: Vec<ChunkId> = signed.manifest.chunk_ids().into_iter().collect();
        if let Some(id) = self.chunks.keep_fresh(&ids).await? {
            return Err(ImageError::Invalid(format!(
                "{image}/{layer} version {version} cannot be published again: chunk {id} is no longer stored"
            )));
        }
        let (stored, _) = self
            .commit(image, layer, "", signed.manifest.entries, key)
            .await?;
        Ok(stored)
    }

    /// The versions past the newest `keep` of each layer and owner that no
    /// pin and no device's mark holds. With `remove`, they are deleted.
    pub async fn retire(&self, keep: usize, remove: bool) -> Result<Retired, ImageError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM gateway_layers ORDER BY image, layer, owner, version DESC"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing layers"))?;
        let marked: HashSet<String> =
            sqlx::query_scalar::<_, String>("SELECT digest FROM gateway_device_layers")
                .fetch_all(&self.pool)
                .await
                .map_err(db("reading devices' layer versions"))?
                .into_iter()
                .collect();
        let pinned: HashSet<(String, String, i64)> =
            sqlx::query("SELECT image, layer, version FROM gateway_pins")
                .fetch_all(&self.pool)
                .await
                .map_err(db("reading pins"))?
                .iter()
                .filter_map(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?, r.try_get(2).ok()?)))
                .collect();
        let mut seen: BTreeMap<(String, Layer, String), usize> = BTreeMap::new();
        let mut gone = Vec::new();
        for l in rows.iter().filter_map(row_layer) {
            let n = seen
                .entry((l.image.clone(), l.layer, l.owner.clone()))
                .or_default();
            *n += 1;
            let is_pinned = l.owner.is_empty()
                && pinned.contains(&(l.image.clone(), l.layer.as_str().to_owned(), v64(l.version)));
            // A user layer's template is the base of every device that has
            // not checked that layer in yet: kept.
            let template = l.owner.is_empty() && !l.layer.is_system();
            if *n > keep.max(1) && !is_pinned && !template && !marked.contains(&l.digest) {
                gone.push(l);
            }
        }
        let mut out = Retired::default();
        for l in &gone {
            if remove {
                // Checked again as it goes: a mark or a pin made since the
                // lists were read keeps it.
                let r = sqlx::query(
                    "DELETE FROM gateway_layers WHERE image = $1 AND layer = $2 AND owner = $3 AND version = $4 \
                     AND NOT EXISTS (SELECT 1 FROM gateway_device_layers m WHERE m.image = $1 AND m.layer = $2 \
                     AND m.digest = gateway_layers.digest) \
                     AND NOT EXISTS (SELECT 1 FROM gateway_pins p WHERE p.image = $1 AND p.layer = $2 \
                     AND p.version = $4 AND $3 = '')",
                )
                .bind(l.image.clone())
                .bind(l.layer.as_str().to_owned())
                .bind(l.owner.clone())
                .bind(v64(l.version))
                .execute(&self.pool)
                .await
                .map_err(db("removing a layer version"))?;
                if r.rows_affected() == 0 {
                    continue;
                }
            }
            out.keys
                .insert((l.image.clone(), l.layer, l.owner.clone(), l.version));
            out.versions.push(if l.owner.is_empty() {
                format!("{}/{}/{}", l.image, l.layer, l.version)
            } else {
                format!("{}/{}/{}@{}", l.image, l.layer, l.version, l.owner)
            });
        }
        Ok(out)
    }
}
