//! The bundle holder: accepts a newer signed policy bundle, refuses
//! anything else (an older version, a bad signature) and keeps the bundle
//! in force; a bundle is kept durably in the state directory before it is
//! put in force, so a restart offline enforces the same policy.

use std::path::Path;
use std::sync::{Arc, RwLock};

use policy::bundle::{Bundle, Mode};

use super::exec::{self, Active};
use super::{AgentError, Settings};

/// The bundle in force for this device, compiled.
pub(super) fn activate(bundle: &Bundle, subject: &str, forced: Option<Mode>) -> Active {
    let groups = policy::closure(&bundle.policy.memberships);
    Active {
        policy: policy::FastPolicy::compile(&bundle.policy),
        mode: forced.unwrap_or_else(|| bundle.mode_for(subject, &groups)),
        version: bundle.manifest.version,
        subject: subject.to_owned(),
    }
}

/// The bundle holder: accepts a newer signed bundle, refuses anything else
/// and keeps the old one in force.
pub(super) struct Holder {
    pub(super) key: ed25519_dalek::VerifyingKey,
    pub(super) state_dir: std::path::PathBuf,
    pub(super) subject: String,
    pub(super) forced: Option<Mode>,
    pub(super) active: Arc<RwLock<Arc<Active>>>,
    pub(super) accepted: Vec<u8>,
    /// The fanotify group, to drop the kernel's cached allows on a change.
    pub(super) group: Option<Arc<nix::sys::fanotify::Fanotify>>,
    /// A policy change whose flush of the kernel's cached allows failed:
    /// retried on every refresh until it succeeds.
    pub(super) flush_pending: bool,
}

/// The policy in force, read through a poisoned lock too (the writer
/// replaces the value whole, so it is never half-written).
pub(crate) fn current(active: &RwLock<Arc<Active>>) -> Arc<Active> {
    match active.read() {
        Ok(a) => Arc::clone(&a),
        Err(p) => Arc::clone(&p.into_inner()),
    }
}

/// The highest bundle version accepted, from `STATE/bundle.version`.
fn held_version(state_dir: &Path) -> Option<u64> {
    std::fs::read_to_string(state_dir.join("bundle.version"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Accept a verified bundle: keep its bytes first, then record its version,
/// so a crash between the two leaves a kept bundle at least as new as the
/// recorded version.
fn keep(
    state_dir: &Path,
    key: &ed25519_dalek::VerifyingKey,
    bytes: &[u8],
) -> Result<Bundle, String> {
    Bundle::verify(bytes, key, held_version(state_dir)).map_err(|e| e.to_string())?;
    persist::write_atomic(&state_dir.join("bundle.accepted"), bytes)
        .map_err(|e| format!("keeping the bundle: {e}"))?;
    Bundle::accept(bytes, key, &state_dir.join("bundle.version")).map_err(|e| e.to_string())
}

impl Holder {
    /// Offer bundle bytes: Ok(true) if it is now in force, Ok(false) if it
    /// is the one already held, Err(reason) if refused.
    /// With `keep_as`, a newer bundle is also written there (durably)
    /// before it is put in force: an offline start then finds it.
    pub(super) fn offer(&mut self, bytes: &[u8], keep_as: Option<&Path>) -> Result<bool, String> {
        if bytes == self.accepted.as_slice() {
            return Ok(false);
        }
        let offered = Bundle::verify(bytes, &self.key, Some(self.current_version()))
            .map_err(|e| e.to_string())?;
        if offered.manifest.version == self.current_version() {
            // Same version, other bytes: keep what is held.
            return Ok(false);
        }
        if let Some(path) = keep_as {
            persist::write_atomic(path, bytes)
                .map_err(|e| format!("keeping the bundle as {}: {e}", path.display()))?;
        }
        let bundle = keep(&self.state_dir, &self.key, bytes)?;
        let a = Arc::new(activate(&bundle, &self.subject, self.forced));
        match self.active.write() {
            Ok(mut slot) => *slot = a,
            Err(p) => *p.into_inner() = a,
        }
        self.accepted = bytes.to_vec();
        self.flush_pending = true;
        self.flush();
        Ok(true)
    }

    /// Drop the kernel's cached allows after a policy change (retried until
    /// it works; until then an allow from the old policy may stand).
    pub(super) fn flush(&mut self) {
        if !self.flush_pending {
            return;
        }
        match self.group.as_deref().map(exec::flush_kernel_cache) {
            None | Some(Ok(())) => self.flush_pending = false,
            Some(Err(e)) => eprintln!(
                "satchel agent: the kernel's cached allows could not be dropped after the policy change (retrying): {e}"
            ),
        }
    }

    pub(super) fn current_version(&self) -> u64 {
        current(&self.active).version
    }

    pub(super) fn current_mode(&self) -> Mode {
        current(&self.active).mode
    }
}

/// The first bundle: the configured file, else the one accepted last time.
pub(super) fn first_bundle(
    s: &Settings,
    key: &ed25519_dalek::VerifyingKey,
) -> Result<(Bundle, Vec<u8>, Option<String>), AgentError> {
    let version_file = s.state_dir.join("bundle.version");
    let refused = match std::fs::read(&s.bundle) {
        Ok(bytes) => match keep(&s.state_dir, key, &bytes) {
            Ok(b) => return Ok((b, bytes, None)),
            Err(e) => format!("{}: {e}", s.bundle.display()),
        },
        Err(e) => format!("{}: {e}", s.bundle.display()),
    };
    let kept = s.state_dir.join("bundle.accepted");
    match std::fs::read(&kept) {
        Ok(bytes) => {
            let b = Bundle::accept(&bytes, key, &version_file).map_err(|source| {
                AgentError::KeptBundle {
                    refused: refused.clone(),
                    kept: kept.clone(),
                    source,
                }
            })?;
            eprintln!(
                "satchel agent: {refused}; the bundle accepted before (version {}) stays in force",
                b.manifest.version
            );
            Ok((b, bytes, Some(refused)))
        }
        Err(_) => Err(AgentError::NoBundle { refused }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::bundle::BundleManifest;

    fn signed(key: &ed25519_dalek::SigningKey, version: u64) -> Vec<u8> {
        let m = BundleManifest {
            format: policy::bundle::FORMAT.to_owned(),
            version,
            created: "2026-12-05T00:00:00Z".to_owned(),
            default_mode: Mode::Lockdown,
            group_modes: Default::default(),
            policy: format!(
                "p, device:d, app, sha256:{}, exec, allow\n",
                "ab".repeat(32)
            ),
        };
        m.sign(key).unwrap().into_bytes()
    }

    fn holder(key: &ed25519_dalek::SigningKey, state_dir: &Path, first: &[u8]) -> Holder {
        let bundle = keep(state_dir, &key.verifying_key(), first).unwrap();
        Holder {
            key: key.verifying_key(),
            state_dir: state_dir.to_owned(),
            subject: "device:d".to_owned(),
            forced: None,
            active: Arc::new(RwLock::new(Arc::new(activate(&bundle, "device:d", None)))),
            accepted: first.to_vec(),
            group: None,
            flush_pending: false,
        }
    }

    /// Regression (issue 22, item 14): a bundle fetched from the gateway is
    /// on disk where an offline start looks before it is in force, and one
    /// that cannot be kept there is not put in force.
    #[test]
    fn a_fetched_bundle_is_kept_before_it_is_enforced() {
        let key = persist::keys::generate();
        let dir = tempfile::tempdir().unwrap();
        let mut h = holder(&key, dir.path(), &signed(&key, 1));
        let v2 = signed(&key, 2);
        let nowhere = dir.path().join("no/such/dir/policy.bundle");
        let refused = h.offer(&v2, Some(&nowhere)).unwrap_err();
        assert!(refused.contains("keeping the bundle"), "{refused}");
        assert_eq!(h.current_version(), 1, "enforced without being kept");
        assert_eq!(held_version(dir.path()), Some(1));
        let kept = dir.path().join("policy.bundle");
        assert!(h.offer(&v2, Some(&kept)).unwrap());
        assert_eq!(h.current_version(), 2);
        assert_eq!(std::fs::read(&kept).unwrap(), v2);
        // An older one is refused and changes nothing on disk.
        assert!(h.offer(&signed(&key, 1), Some(&kept)).is_err());
        assert_eq!(std::fs::read(&kept).unwrap(), v2);
    }
}
