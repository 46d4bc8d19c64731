//! Layer manifests: one version of one layer of one image, as a file tree
//! (paths, types, modes, sizes, symlink targets) with each regular file's
//! content as its list of chunk ids. Metadata is kept apart from content: a
//! mode change moves no chunk.
//!
//! A system layer carries a whole operating system's tree (format
//! `satchel-layer-v2`): each entry's owner, nanosecond modification time
//! and extended attributes (file capabilities, ACLs, SELinux labels), hard
//! links, FIFOs and device nodes. A user layer, written on a device, keeps
//! the plain form (`satchel-layer-v1`: paths, modes, content): no owner, no
//! times, no attributes but `user.*`, no devices.
//!
//! On disk and on the wire a manifest is signed by the gateway's manifest
//! key (ed25519):
//!
//! ```json
//! {"manifest": {...}, "signature": {"alg": "ed25519", "key_id": "...", "sig": "base64"}}
//! ```
//!
//! The signature covers `satchel-layer-v1\0` followed by the exact bytes of
//! the `manifest` value as they appear in the file; the layer's **digest**
//! is the SHA-256 of those same bytes. The digest is what the boot chain
//! measures for the layer.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest as _, Sha256};

use crate::chunk::ChunkId;

/// The `format` of a manifest whose entries use nothing of [`FORMAT_V2`].
pub const FORMAT: &str = "satchel-layer-v1";
/// The `format` of a manifest with owners, times, extended attributes,
/// hard links, FIFOs or device nodes.
pub const FORMAT_V2: &str = "satchel-layer-v2";
/// Extended attribute namespaces a layer may carry.
pub const XATTR_NAMESPACES: [&str; 4] = ["security.", "system.posix_acl_", "trusted.", "user."];
/// Largest extended attribute value (the kernel's own limit).
pub const MAX_XATTR: usize = 64 << 10;
/// Prefixed to the manifest bytes before signing (domain separation).
pub const SIGNING_CONTEXT: &[u8] = b"satchel-layer-v1\0";
/// Largest signed manifest accepted.
pub const MAX_MANIFEST: usize = 64 << 20;
/// Most entries in one layer.
pub const MAX_ENTRIES: usize = 2_000_000;

/// The layers of an image, bottom to top.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layer {
    /// The operating system.
    BaseOs,
    /// Applications for the device's group (a class, an office).
    GroupApps,
    /// Applications the user installed.
    PersonalApps,
    /// The user's system settings.
    UserSystem,
    /// The user's files.
    UserData,
}

impl Layer {
    /// All layers, bottom to top.
    pub const ALL: [Layer; 5] = [
        Layer::BaseOs,
        Layer::GroupApps,
        Layer::PersonalApps,
        Layer::UserSystem,
        Layer::UserData,
    ];

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::BaseOs => "base-os",
            Layer::GroupApps => "group-apps",
            Layer::PersonalApps => "personal-apps",
            Layer::UserSystem => "user-system",
            Layer::UserData => "user-data",
        }
    }

    /// A system layer: only the gateway changes it; a client's change is a
    /// violation, undone by the next pull.
    pub fn is_system(self) -> bool {
        matches!(self, Layer::BaseOs | Layer::GroupApps)
    }

    /// The mode bits an entry of this layer may carry: all of them in a
    /// system layer (built by the organisation), only the permission bits
    /// in a user layer (written on a device, so never setuid, setgid or
    /// sticky: a user could otherwise plant a setuid program that a later
    /// restore writes as root).
    pub fn allowed_mode_bits(self) -> u32 {
        if self.is_system() {
            0o7777
        } else {
            0o777
        }
    }

    /// `entries` cut to what this layer may carry; the paths cut. A system
    /// layer keeps everything. A user layer keeps the plain form:
    /// directories, files and symlinks with permission bits only (never
    /// setuid, setgid or sticky: a user could otherwise plant a setuid
    /// program that a later restore writes as root), no owner, no time, no
    /// attribute; any other kind (a device node, a FIFO, a hard link) is
    /// dropped.
    pub fn strip_special_bits(self, entries: &mut Vec<Entry>) -> Vec<String> {
        let allowed = self.allowed_mode_bits();
        let mut cut = Vec::new();
        if self.is_system() {
            return cut;
        }
        entries.retain(|e| {
            let plain = matches!(e.kind, Kind::Dir | Kind::File { .. } | Kind::Symlink { .. })
                && e.path != ROOT;
            if !plain {
                cut.push(e.path.clone());
            }
            plain
        });
        for e in entries.iter_mut() {
            let before = e.clone();
            e.mode &= allowed;
            e.uid = None;
            e.gid = None;
            e.mtime_ns = None;
            e.xattrs.clear();
            e.sparse = false;
            if *e != before {
                cut.push(e.path.clone());
            }
        }
        cut
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A layer name that is not one of the five.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a layer (base-os, group-apps, personal-apps, user-system, user-data)")]
pub struct BadLayer(pub String);

impl FromStr for Layer {
    type Err = BadLayer;
    fn from_str(s: &str) -> Result<Layer, BadLayer> {
        Layer::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| BadLayer(s.to_owned()))
    }
}

/// What an entry is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Kind {
    /// A directory.
    #[default]
    Dir,
    /// A regular file: its size and its chunks, in order.
    File {
        /// Length in bytes.
        size: u64,
        /// Its content, chunk by chunk.
        chunks: Vec<ChunkId>,
    },
    /// A symbolic link.
    Symlink {
        /// Where it points (as written; never followed by Satchel).
        target: String,
    },
    /// Another name of a regular file of the same layer (v2): `target` is
    /// that file's path, an earlier entry.
    Hardlink {
        /// The file's path in the layer.
        target: String,
    },
    /// A named pipe (v2).
    Fifo,
    /// A character device (v2; made only as root).
    Char {
        /// Its major number.
        major: u32,
        /// Its minor number.
        minor: u32,
    },
    /// A block device (v2; made only as root).
    Block {
        /// Its major number.
        major: u32,
        /// Its minor number.
        minor: u32,
    },
}

/// One path of a layer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// Relative path, `/`-separated, no `.`, `..` or empty components.
    pub path: String,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// What it is.
    #[serde(flatten)]
    pub kind: Kind,
    /// The owner's uid (v2; system layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The group's gid (v2; system layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// The modification time, nanoseconds since the epoch (v2; system layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
    /// Extended attributes by name, values in base64 (v2; `user.*` only
    /// in user layers).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub xattrs: std::collections::BTreeMap<String, String>,
    /// A regular file that had holes (v2): chunks of zeros are written back
    /// as holes. A file without holes (a swap file, a preallocated
    /// database) is written whole.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sparse: bool,
}

impl Entry {
    /// An entry with no owner, time or attributes.
    pub fn new(path: impl Into<String>, mode: u32, kind: Kind) -> Entry {
        Entry {
            path: path.into(),
            mode,
            kind,
            ..Entry::default()
        }
    }

    /// Whether two entries have the same content and metadata. A
    /// directory's time is left out: it moves with every name added or
    /// removed in it, which is a change of that name, not of the directory.
    pub fn same(&self, other: &Entry) -> bool {
        self.mode == other.mode
            && self.kind == other.kind
            && self.uid == other.uid
            && self.gid == other.gid
            && (self.mtime_ns == other.mtime_ns || matches!(self.kind, Kind::Dir))
            && self.xattrs == other.xattrs
            && self.sparse == other.sparse
    }

    /// Whether it uses anything of [`FORMAT_V2`].
    pub fn is_v2(&self) -> bool {
        self.uid.is_some()
            || self.gid.is_some()
            || self.sparse
            || self.path == ROOT
            || self.mtime_ns.is_some()
            || !self.xattrs.is_empty()
            || matches!(
                self.kind,
                Kind::Hardlink { .. } | Kind::Fifo | Kind::Char { .. } | Kind::Block { .. }
            )
    }
}

/// The path of a v2 manifest's first entry: the layer's own directory
/// (its mode, owner, time and attributes).
pub const ROOT: &str = ".";

/// Whether two trees have the same entries, as [`Entry::same`] compares
/// them.
pub fn same_tree(a: &[Entry], b: &[Entry]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.path == y.path && x.same(y))
}

/// The format for a manifest of `entries`.
pub fn format_for(entries: &[Entry]) -> &'static str {
    if entries.iter().any(Entry::is_v2) {
        FORMAT_V2
    } else {
        FORMAT
    }
}

/// One version of one layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerManifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// The image.
    pub image: String,
    /// The layer.
    pub layer: Layer,
    /// Its version (1, 2, ...): higher is newer.
    pub version: u64,
    /// When it was built (RFC 3339).
    pub created: String,
    /// The entries, sorted by path, each path once.
    pub entries: Vec<Entry>,
}

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Not the expected JSON.
    #[error("not a signed layer manifest: {0}")]
    Json(#[source] serde_json::Error),
    /// Too large.
    #[error("manifest of {0} bytes is over the {MAX_MANIFEST}-byte limit")]
    TooLarge(usize),
    /// The signature block.
    #[error("signature: {0}")]
    Signature(String),
    /// The content.
    #[error("manifest: {0}")]
    Invalid(String),
}

/// An ed25519 key's id: the first 8 bytes of SHA-256 of the key, in hex.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureBlock {
    alg: String,
    key_id: String,
    sig: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    #[serde(borrow)]
    manifest: &'a RawValue,
    signature: SignatureBlock,
}

/// A verified manifest, with its digest and its signed bytes.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The manifest.
    pub manifest: LayerManifest,
    /// SHA-256 of the manifest bytes, hex.
    pub digest: String,
    /// The whole signed document, as received.
    pub text: String,
}

/// An entry's extended attributes: known namespaces, bounded names and
/// values, values in base64.
fn check_xattrs(e: &Entry) -> Result<(), String> {
    if e.xattrs.len() > 64 {
        return Err(format!(
            "{}: {} extended attributes",
            e.path,
            e.xattrs.len()
        ));
    }
    for (name, value) in &e.xattrs {
        let known = XATTR_NAMESPACES
            .iter()
            .any(|ns| name.len() > ns.len() && name.starts_with(ns));
        if !known || name.len() > 255 || name.contains('\0') {
            return Err(format!("{}: extended attribute {name:?}", e.path));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|_| format!("{}: attribute {name}: not base64", e.path))?;
        if bytes.len() > MAX_XATTR {
            return Err(format!(
                "{}: attribute {name}: {} bytes",
                e.path,
                bytes.len()
            ));
        }
    }
    Ok(())
}

/// A path as a layer may hold it.
pub fn check_path(p: &str) -> Result<(), String> {
    if p.is_empty() || p.len() > 4096 {
        return Err(format!("path {p:?}: empty or over 4096 bytes"));
    }
    if p.contains('\0') || p.starts_with('/') {
        return Err(format!("path {p:?}: absolute or with a NUL"));
    }
    if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(format!("path {p:?}: an empty, . or .. component"));
    }
    Ok(())
}

impl LayerManifest {
    /// Check what a signature cannot: format, sorted unique safe paths,
    /// modes, a parent directory for every nested path, bounds.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let bad = |m: String| ManifestError::Invalid(m);
        let v2 = match self.format.as_str() {
            FORMAT => false,
            FORMAT_V2 => true,
            other => {
                return Err(bad(format!(
                    "format {other:?} is not {FORMAT} or {FORMAT_V2}"
                )))
            }
        };
        if self.image.is_empty() || self.image.len() > 128 || self.image.contains(['/', '\0']) {
            return Err(bad(format!("image name {:?}", self.image)));
        }
        if self.entries.len() > MAX_ENTRIES {
            return Err(bad(format!("{} entries", self.entries.len())));
        }
        let mut dirs = BTreeSet::new();
        let mut files = BTreeSet::new();
        let mut prev: Option<&str> = None;
        let mut entries = self.entries.iter().peekable();
        if let Some(root) = entries.next_if(|e| e.path == ROOT) {
            if !v2 || root.kind != Kind::Dir {
                return Err(bad(format!(
                    "{ROOT:?}: the layer's directory, in a {FORMAT_V2} manifest only"
                )));
            }
            if root.mode > 0o7777 {
                return Err(bad(format!("{ROOT:?}: mode {:o}", root.mode)));
            }
            check_xattrs(root).map_err(bad)?;
        }
        for e in entries {
            if e.is_v2() && !v2 {
                return Err(bad(format!(
                    "{}: owner, time, attributes, link or device in a {FORMAT} manifest",
                    e.path
                )));
            }
            check_xattrs(e).map_err(bad)?;
            check_path(&e.path).map_err(bad)?;
            if prev.is_some_and(|p| p >= e.path.as_str()) {
                return Err(bad(format!("entries not sorted or {:?} twice", e.path)));
            }
            prev = Some(&e.path);
            if e.mode > 0o7777 {
                return Err(bad(format!("{}: mode {:o}", e.path, e.mode)));
            }
            if let Some((parent, _)) = e.path.rsplit_once('/') {
                if !dirs.contains(parent) {
                    return Err(bad(format!("{}: no directory entry for {parent}", e.path)));
                }
            }
            match &e.kind {
                Kind::Dir => {
                    dirs.insert(e.path.as_str());
                }
                Kind::Symlink { target } if target.is_empty() || target.contains('\0') => {
                    return Err(bad(format!("{}: symlink target {target:?}", e.path)));
                }
                Kind::Hardlink { target } if !files.contains(target.as_str()) => {
                    return Err(bad(format!(
                        "{}: a hard link to {target:?}, which is no earlier file of the layer",
                        e.path
                    )));
                }
                Kind::File { size, chunks } => {
                    files.insert(e.path.as_str());
                    let most = chunks.len() as u64 * u64::from(crate::chunk::MAX_CHUNK);
                    if *size > most || (chunks.is_empty() != (*size == 0)) {
                        return Err(bad(format!(
                            "{}: size {size} for {} chunks",
                            e.path,
                            chunks.len()
                        )));
                    }
                }
                Kind::Char { major, minor } | Kind::Block { major, minor }
                    if *major > 0xfff || *minor > 0xf_ffff =>
                {
                    return Err(bad(format!("{}: device {major}:{minor}", e.path)));
                }
                Kind::Symlink { .. }
                | Kind::Hardlink { .. }
                | Kind::Fifo
                | Kind::Char { .. }
                | Kind::Block { .. } => {}
            }
        }
        Ok(())
    }

    /// Every chunk the layer uses, each once.
    pub fn chunk_ids(&self) -> BTreeSet<ChunkId> {
        self.entries
            .iter()
            .filter_map(|e| match &e.kind {
                Kind::File { chunks, .. } => Some(chunks.iter().copied()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Sign: the signed document and its digest.
    pub fn sign(&self, key: &SigningKey) -> Result<Signed, ManifestError> {
        self.validate()?;
        let body = serde_json::to_string(self).map_err(ManifestError::Json)?;
        let mut msg = SIGNING_CONTEXT.to_vec();
        msg.extend_from_slice(body.as_bytes());
        let block = SignatureBlock {
            alg: "ed25519".to_owned(),
            key_id: key_id(&key.verifying_key()),
            sig: base64::engine::general_purpose::STANDARD.encode(key.sign(&msg).to_bytes()),
        };
        let block = serde_json::to_string(&block).map_err(ManifestError::Json)?;
        Ok(Signed {
            manifest: self.clone(),
            digest: hex::encode(Sha256::digest(body.as_bytes())),
            text: format!("{{\"manifest\":{body},\"signature\":{block}}}"),
        })
    }
}

impl Signed {
    /// Check a signed document with `key`; the manifest if it verifies and
    /// is valid.
    pub fn verify(text: &str, key: &VerifyingKey) -> Result<Signed, ManifestError> {
        if text.len() > MAX_MANIFEST {
            return Err(ManifestError::TooLarge(text.len()));
        }
        let env: Envelope<'_> = serde_json::from_str(text).map_err(ManifestError::Json)?;
        let s = &env.signature;
        if s.alg != "ed25519" {
            return Err(ManifestError::Signature(format!("algorithm {:?}", s.alg)));
        }
        if s.key_id != key_id(key) {
            return Err(ManifestError::Signature(format!(
                "signed by key {}, expected {}",
                s.key_id,
                key_id(key)
            )));
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&s.sig)
            .map_err(|_| ManifestError::Signature("not base64".to_owned()))?;
        let sig = ed25519_dalek::Signature::from_slice(&raw)
            .map_err(|_| ManifestError::Signature("not an ed25519 signature".to_owned()))?;
        let body = env.manifest.get();
        let mut msg = SIGNING_CONTEXT.to_vec();
        msg.extend_from_slice(body.as_bytes());
        key.verify(&msg, &sig)
            .map_err(|_| ManifestError::Signature("does not verify".to_owned()))?;
        let manifest: LayerManifest = serde_json::from_str(body).map_err(ManifestError::Json)?;
        manifest.validate()?;
        Ok(Signed {
            manifest,
            digest: hex::encode(Sha256::digest(body.as_bytes())),
            text: text.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LayerManifest {
        LayerManifest {
            format: FORMAT.to_owned(),
            image: "classroom".to_owned(),
            layer: Layer::BaseOs,
            version: 1,
            created: "2026-11-23T00:00:00Z".to_owned(),
            entries: vec![
                Entry {
                    path: "etc".into(),
                    mode: 0o755,
                    kind: Kind::Dir,
                    ..Entry::default()
                },
                Entry {
                    path: "etc/hostname".into(),
                    mode: 0o644,
                    kind: Kind::File {
                        size: 5,
                        chunks: vec![ChunkId::of(b"host\n")],
                    },
                    ..Entry::default()
                },
                Entry {
                    path: "etc/link".into(),
                    mode: 0o777,
                    kind: Kind::Symlink {
                        target: "hostname".into(),
                    },
                    ..Entry::default()
                },
            ],
        }
    }

    #[test]
    fn sign_verify_and_every_flipped_byte_fails() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let signed = sample().sign(&key).unwrap();
        let back = Signed::verify(&signed.text, &key.verifying_key()).unwrap();
        assert_eq!(back.manifest, sample());
        assert_eq!(back.digest, signed.digest);
        let other = SigningKey::from_bytes(&[8; 32]);
        assert!(Signed::verify(&signed.text, &other.verifying_key()).is_err());
        let bytes = signed.text.as_bytes();
        for i in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[i] ^= 0x01;
            if let Ok(t) = std::str::from_utf8(&b) {
                assert!(Signed::verify(t, &key.verifying_key()).is_err(), "byte {i}");
            }
        }
    }

    #[test]
    fn unsafe_or_unsorted_trees_are_refused() {
        let key = SigningKey::from_bytes(&[7; 32]);
        for path in [
            "../etc/passwd",
            "/etc/x",
            "etc/./x",
            "etc//x",
            "etc/..",
            "nodir/x",
        ] {
            let mut m = sample();
            m.entries.push(Entry {
                path: path.into(),
                mode: 0o644,
                kind: Kind::Dir,
                ..Entry::default()
            });
            m.entries.sort_by(|a, b| a.path.cmp(&b.path));
            assert!(m.sign(&key).is_err(), "{path}");
        }
        let mut m = sample();
        m.entries.swap(0, 1);
        assert!(m.validate().is_err());
        let mut m = sample();
        m.entries[1].kind = Kind::File {
            size: 1 << 30,
            chunks: vec![ChunkId::of(b"x")],
        };
        assert!(m.validate().is_err());
    }
}
