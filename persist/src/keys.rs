//! Ed25519 key files, the one format every signing key of Satchel uses:
//! private keys as PKCS#8 PEM (mode 0600, never overwritten), public keys
//! as SPKI PEM, and the short key id written beside signatures.
//!
//! Readers are bounded ([`MAX_KEY_FILE_BYTES`]); writers go through
//! [`crate::file`], so a key reported written survives a crash. This module
//! never writes a private key readable by anyone but its owner.

use std::fs::File;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    spki, DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _,
};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::OsRng;
use sha2::{Digest as _, Sha256};

use crate::file::{self, FileError};

/// Largest key file the readers open, in bytes.
pub const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// A key file could not be read, written or understood.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Reading a key file failed.
    #[error("key file {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// Writing a key file failed.
    #[error("key file {}: {source}", .source.path().display())]
    Write {
        /// What went wrong, naming the file.
        #[source]
        source: FileError,
    },
    /// Refused to overwrite an existing private key file.
    #[error("key file {} already exists; refusing to overwrite a signing key", .path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A key file is larger than [`MAX_KEY_FILE_BYTES`].
    #[error("key file {} is {len} bytes, more than the {max} allowed", .path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A private key file is not (or could not be made) Ed25519 PKCS#8 PEM.
    #[error("key file {}: not an Ed25519 PKCS#8 PEM private key", .path.display())]
    PrivatePem {
        /// The file.
        path: PathBuf,
        /// The PKCS#8 codec's complaint.
        #[source]
        source: ed25519_dalek::pkcs8::Error,
    },
    /// A public key file or text is not (or could not be made) Ed25519 SPKI PEM.
    #[error("key file {}: not an Ed25519 SPKI PEM public key", .path.display())]
    PublicPem {
        /// The file (empty for text that came from no file).
        path: PathBuf,
        /// The SPKI codec's complaint.
        #[source]
        source: spki::Error,
    },
}

impl KeyError {
    /// The key file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            KeyError::Write { source } => source.path(),
            KeyError::Io { path, .. }
            | KeyError::Exists { path }
            | KeyError::TooLarge { path, .. }
            | KeyError::PrivatePem { path, .. }
            | KeyError::PublicPem { path, .. } => path,
        }
    }
}

/// A fresh Ed25519 key from the operating system's random source (which,
/// as for every Ed25519 key generator, must not fail).
pub fn generate() -> SigningKey {
    SigningKey::generate(&mut OsRng)
}

/// The key id written in signature blocks (references, policy bundles): the
/// first 8 bytes of SHA-256 of the public key, as hex.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Write `key` to `path` as PKCS#8 PEM, mode 0600, durably; refuses to
/// overwrite an existing file.
pub fn write_private(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|source| KeyError::PrivatePem {
            path: path.to_owned(),
            source,
        })?;
    file::write_new(path, pem.as_bytes(), 0o600).map_err(|e| match e {
        FileError::Exists { path } => KeyError::Exists { path },
        source => KeyError::Write { source },
    })
}

/// Write `key` to `path` as SPKI PEM, mode 0644, durably (replacing any
/// file there).
pub fn write_public(path: &Path, key: &VerifyingKey) -> Result<(), KeyError> {
    let pem = public_pem(key).map_err(|source| KeyError::PublicPem {
        path: path.to_owned(),
        source,
    })?;
    file::write_atomic(path, pem.as_bytes()).map_err(|source| KeyError::Write { source })
}

/// `key` as SPKI PEM text.
pub fn public_pem(key: &VerifyingKey) -> Result<String, spki::Error> {
    key.to_public_key_pem(LineEnding::LF)
}

/// An Ed25519 public key from SPKI PEM text (`what` names where it came
/// from, for the error).
pub fn parse_public(pem: &str, what: &Path) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_public_key_pem(pem).map_err(|source| KeyError::PublicPem {
        path: what.to_owned(),
        source,
    })
}

/// Read a PKCS#8 PEM Ed25519 private key. Warns when the file is readable
/// by group or others.
pub fn read_private(path: &Path) -> Result<SigningKey, KeyError> {
    let text = read_key_file(path)?;
    warn_if_exposed(path);
    SigningKey::from_pkcs8_pem(&text).map_err(|source| KeyError::PrivatePem {
        path: path.to_owned(),
        source,
    })
}

/// Read an SPKI PEM Ed25519 public key.
pub fn read_public(path: &Path) -> Result<VerifyingKey, KeyError> {
    parse_public(&read_key_file(path)?, path)
}

/// Read the private key at `path`, or make one there (and write its public
/// key to `public`) when there is none.
pub fn load_or_generate(path: &Path, public: &Path) -> Result<SigningKey, KeyError> {
    if path.exists() {
        return read_private(path);
    }
    let key = generate();
    match write_private(path, &key) {
        // Another process made it first: use theirs.
        Err(KeyError::Exists { .. }) => return read_private(path),
        other => other?,
    }
    write_public(public, &key.verifying_key())?;
    Ok(key)
}

/// Read a key file of at most [`MAX_KEY_FILE_BYTES`] as text.
fn read_key_file(path: &Path) -> Result<String, KeyError> {
    let io_error = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_error)?;
    let len = file.metadata().map_err(io_error)?.len();
    if len > MAX_KEY_FILE_BYTES {
        return Err(KeyError::TooLarge {
            path: path.to_owned(),
            len,
            max: MAX_KEY_FILE_BYTES,
        });
    }
    let mut text = String::new();
    file.take(MAX_KEY_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(io_error)?;
    Ok(text)
}

/// Log a warning when a private key file is readable by group or others.
fn warn_if_exposed(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format_args!("{mode:o}"),
                "signing key file is readable by group or others");
        }
    }
}
