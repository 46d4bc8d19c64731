//! Push-OS sync: the image's layers offered to a device, chunks and file
//! deltas fetched, chunks uploaded, a layer's tree checked in. Chunk and
//! delta streams are binary (`sync::wire`); everything else is JSON.

use serde::{Deserialize, Serialize};
use sync::manifest::{Entry, Layer};
use sync::reconcile::Conflict;
use sync::ChunkId;

/// `POST .../offer`: the layer versions the device holds, by digest.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfferRequest {
    /// Digests of held layer versions (at most [`crate::limits::MAX_OFFER_DIGESTS`]).
    pub have: Vec<String>,
}

/// The image as offered to a device (`GET` and `offer`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    /// The image.
    pub image: String,
    /// The gateway's manifest key, SPKI PEM.
    pub manifest_key: String,
    /// The newest version of each layer the device gets.
    pub layers: Vec<OfferedLayer>,
}

/// One layer version in an [`Offer`]: its signed manifest whole, or as a
/// delta against a version the device holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfferedLayer {
    /// The layer.
    pub layer: Layer,
    /// Its version.
    pub version: u64,
    /// The digest of its signed manifest.
    pub digest: String,
    /// The signed manifest, whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// The signed manifest as a delta.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_delta: Option<ManifestDelta>,
}

/// A signed manifest as a zstd delta against a held version.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestDelta {
    /// The digest of the version it is a delta against (`None`: compressed whole).
    pub base: Option<String>,
    /// The delta, standard base64.
    pub zstd: String,
}

/// `POST .../chunks` (at most [`crate::limits::MAX_FETCH`]) and `POST
/// .../missing` (at most [`crate::limits::MAX_ASK`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ids {
    /// Chunk ids.
    pub ids: Vec<ChunkId>,
}

/// The answer to `missing`: the ids the gateway lacks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Missing {
    /// Chunk ids.
    pub missing: Vec<ChunkId>,
}

/// `POST .../deltas` (at most [`crate::limits::MAX_DELTA_FILES`] files).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltasRequest {
    /// The files wanted.
    pub files: Vec<DeltaFile>,
}

/// One file of a [`DeltasRequest`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaFile {
    /// The chunk ids of the version the device holds.
    pub from: Vec<ChunkId>,
    /// The chunk ids of the version it wants.
    pub to: Vec<ChunkId>,
    /// Those of `to` the device lacks.
    pub missing: Vec<ChunkId>,
}

/// The answer to `upload`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uploaded {
    /// Chunks stored now.
    pub stored: u64,
    /// Chunks the gateway already had.
    pub known: u64,
}

/// `POST .../checkin`: a layer's tree and the version it started from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckIn {
    /// The layer.
    pub layer: Layer,
    /// The digest of the last version both sides had (`None`: none).
    pub base_digest: Option<String>,
    /// The device's tree now.
    pub entries: Vec<Entry>,
}

/// The answer to a [`CheckIn`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckedIn {
    /// The layer.
    pub layer: Layer,
    /// The gateway's version after the merge.
    pub version: u64,
    /// Its digest (`None` when the gateway holds no version of a system layer).
    pub digest: Option<String>,
    /// Paths both sides changed differently, and what was done.
    pub conflicts: Vec<Conflict>,
    /// Paths changed in a system layer (refused, audited).
    pub violations: Vec<String>,
    /// Paths taken from the device.
    pub from_client: Vec<String>,
    /// Paths of a user layer whose setuid, setgid or sticky bits the
    /// gateway stripped (a user layer never carries them).
    #[serde(default)]
    pub stripped: Vec<String>,
}
