//! Signed policy bundles: what the gateway hands a client to enforce
//! offline. A bundle carries the policy lines, a version, and the mode per
//! group (`lockdown`: a deny is enforced; `monitor`: a deny is reported but
//! allowed), signed with the organisation's ed25519 key.
//!
//! The file is `{"bundle": {...}, "signature": {...}}`; the signature covers
//! [`SIGNING_CONTEXT`] followed by the exact bytes of the `bundle` value in
//! the file, so no JSON canonicalisation is involved. A client refuses a
//! bundle whose signature does not verify, and one whose version is lower
//! than the one it holds (rollback). See `docs/policy.md`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::model::{PolicyError, PolicyText};

/// The bundle format.
pub const FORMAT: &str = "satchel-bundle-v1";
/// What the signature is over: this, then the bundle's bytes.
pub const SIGNING_CONTEXT: &[u8] = b"satchel-bundle-v1\0";
/// Largest bundle file read.
pub const MAX_BUNDLE: usize = 64 << 20;

/// How a deny is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A deny is enforced.
    Lockdown,
    /// A deny is reported but allowed (for rolling out a policy).
    Monitor,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "lockdown" => Ok(Mode::Lockdown),
            "monitor" => Ok(Mode::Monitor),
            _ => Err(format!("{s:?} is not lockdown or monitor")),
        }
    }
}

/// The signed part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Increases with every bundle the organisation issues.
    pub version: u64,
    /// When it was made (RFC 3339).
    pub created: String,
    /// The mode of subjects no `group_modes` entry covers.
    pub default_mode: Mode,
    /// Mode per group (or device).
    #[serde(default)]
    pub group_modes: BTreeMap<String, Mode>,
    /// The policy lines (docs/policy.md).
    pub policy: String,
}

/// A verified bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The signed manifest.
    pub manifest: BundleManifest,
    /// Its policy, validated.
    pub policy: PolicyText,
}

/// Why a bundle is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Not a bundle file.
    #[error("not a signed policy bundle: {0}")]
    Envelope(String),
    /// Signed by another key.
    #[error("signed by key {found}, not by the bundle key {expected}")]
    WrongKey {
        /// The given key's id.
        expected: String,
        /// The id in the file.
        found: String,
    },
    /// The signature does not verify.
    #[error("the signature does not verify: the bundle was changed after signing (or forged)")]
    BadSignature,
    /// Older than the bundle the client holds.
    #[error("bundle version {offered} is older than version {held}, which this client already holds (rollback refused)")]
    Rollback {
        /// The version held.
        held: u64,
        /// The version offered.
        offered: u64,
    },
    /// The policy inside does not validate.
    #[error("the bundle's policy is invalid: {0}")]
    Policy(#[from] PolicyError),
    /// The state file holding the accepted version cannot be used.
    #[error("bundle state {path}: {problem}")]
    State {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
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
    bundle: &'a serde_json::value::RawValue,
    signature: SignatureBlock,
}

/// The key id in signature blocks: the first 8 bytes of SHA-256 of the key.
pub use persist::keys::key_id;

impl BundleManifest {
    /// The signed bundle file.
    pub fn sign(&self, key: &SigningKey) -> Result<String, BundleError> {
        PolicyText::parse(&self.policy)?;
        let body =
            serde_json::to_string_pretty(self).map_err(|e| BundleError::Envelope(e.to_string()))?;
        let mut msg = SIGNING_CONTEXT.to_vec();
        msg.extend_from_slice(body.as_bytes());
        let block = SignatureBlock {
            alg: "ed25519".to_owned(),
            key_id: key_id(&key.verifying_key()),
            sig: base64::engine::general_purpose::STANDARD.encode(key.sign(&msg).to_bytes()),
        };
        let block = serde_json::to_string_pretty(&block)
            .map_err(|e| BundleError::Envelope(e.to_string()))?;
        Ok(format!(
            "{{\n\"bundle\": {body},\n\"signature\": {block}\n}}\n"
        ))
    }
}

/// The file's envelope, within the size limit.
fn envelope(bytes: &[u8]) -> Result<Envelope<'_>, BundleError> {
    if bytes.len() > MAX_BUNDLE {
        return Err(BundleError::Envelope(format!(
            "{} bytes is over the limit",
            bytes.len()
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| BundleError::Envelope(e.to_string()))
}

/// The signed part, of this format.
fn manifest_of(env: &Envelope<'_>) -> Result<BundleManifest, BundleError> {
    let manifest: BundleManifest =
        serde_json::from_str(env.bundle.get()).map_err(|e| BundleError::Envelope(e.to_string()))?;
    if manifest.format != FORMAT {
        return Err(BundleError::Envelope(format!(
            "format {:?} is not {FORMAT}",
            manifest.format
        )));
    }
    Ok(manifest)
}

impl Bundle {
    /// The version a bundle file claims, without checking its signature:
    /// for a relay (the gateway) that stores bundles and refuses an older
    /// one, but holds no bundle key. A client always calls [`Bundle::verify`].
    pub fn claimed_version(bytes: &[u8]) -> Result<u64, BundleError> {
        Ok(manifest_of(&envelope(bytes)?)?.version)
    }

    /// Check a bundle file's signature with `key` and, when the client
    /// holds one, that it is not older than version `held`.
    pub fn verify(
        bytes: &[u8],
        key: &VerifyingKey,
        held: Option<u64>,
    ) -> Result<Bundle, BundleError> {
        let env = envelope(bytes)?;
        if env.signature.alg != "ed25519" {
            return Err(BundleError::Envelope(format!(
                "signature algorithm {:?} is not ed25519",
                env.signature.alg
            )));
        }
        let expected = key_id(key);
        if env.signature.key_id != expected {
            return Err(BundleError::WrongKey {
                expected,
                found: env.signature.key_id,
            });
        }
        let sig = base64::engine::general_purpose::STANDARD
            .decode(&env.signature.sig)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .ok_or(BundleError::BadSignature)?;
        let mut msg = SIGNING_CONTEXT.to_vec();
        msg.extend_from_slice(env.bundle.get().as_bytes());
        key.verify(&msg, &ed25519_dalek::Signature::from_bytes(&sig))
            .map_err(|_| BundleError::BadSignature)?;
        let manifest = manifest_of(&env)?;
        if let Some(held) = held {
            if manifest.version < held {
                return Err(BundleError::Rollback {
                    held,
                    offered: manifest.version,
                });
            }
        }
        let policy = PolicyText::parse(&manifest.policy)?;
        Ok(Bundle { manifest, policy })
    }

    /// Verify against the version recorded in `state` (a small file holding
    /// the highest version accepted), then record this one. The file is
    /// replaced atomically, so a crash leaves the old or the new version.
    pub fn accept(bytes: &[u8], key: &VerifyingKey, state: &Path) -> Result<Bundle, BundleError> {
        let err = |problem: String| BundleError::State {
            path: state.display().to_string(),
            problem,
        };
        let held = match std::fs::read_to_string(state) {
            Ok(s) => Some(
                s.trim()
                    .parse::<u64>()
                    .map_err(|_| err(format!("{:?} is not a version", s.trim())))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(err(e.to_string())),
        };
        let bundle = Bundle::verify(bytes, key, held)?;
        if held != Some(bundle.manifest.version) {
            let text = format!("{}\n", bundle.manifest.version);
            persist::write_atomic(state, text.as_bytes()).map_err(|e| err(e.to_string()))?;
        }
        Ok(bundle)
    }

    /// The mode for `subject`: the strictest mode set for it or any group
    /// it is in (lockdown beats monitor), else the default.
    pub fn mode_for(&self, subject: &str, groups: &HashMap<String, BTreeSet<String>>) -> Mode {
        let mine = std::iter::once(subject.to_owned())
            .chain(groups.get(subject).into_iter().flatten().cloned())
            .chain(std::iter::once("group:all".to_owned()));
        mine.filter_map(|g| self.manifest.group_modes.get(&g).copied())
            .min()
            .unwrap_or(self.manifest.default_mode)
    }
}
