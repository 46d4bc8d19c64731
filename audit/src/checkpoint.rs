//! Signed checkpoints in the C2SP formats (`c2sp.org/tlog-checkpoint` body
//! inside a `c2sp.org/signed-note` note, Ed25519 signature type 0x01), the
//! verifier-key (`vkey`) text form. The log key's PEM files are
//! `persist::keys`'s.
//!
//! Parsing is strict and bounded: a note over [`MAX_NOTE_BYTES`] or with
//! more than [`MAX_SIGNATURES`] signature lines is refused before any
//! signature is checked, and the body is read only after a signature by the
//! expected key has verified. This module never trusts a note it could not
//! verify.

use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use sha2::{Digest as _, Sha256};

use crate::merkle::Hash;

/// Largest note [`parse_and_verify`] reads, in bytes.
pub const MAX_NOTE_BYTES: usize = 1 << 20;
/// Most signature lines [`parse_and_verify`] reads (the Go `note` limit).
pub const MAX_SIGNATURES: usize = 100;
/// Largest vkey text [`Verifier::from_vkey`] reads, in bytes.
const MAX_VKEY_BYTES: usize = 4096;
/// Signed-note signature type of Ed25519.
const ED25519_TYPE: u8 = 0x01;
/// What every signature line starts with: U+2014 EM DASH, then a space.
const SIGNATURE_PREFIX: &str = "\u{2014} ";
/// Bytes of a key id.
const KEY_ID_LEN: usize = 4;

/// A signed-note key id: the first 4 bytes of a hash over name and key.
pub type KeyId = [u8; KEY_ID_LEN];

/// Why a checkpoint could not be made, parsed or verified, or a key file
/// could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The note is longer than [`MAX_NOTE_BYTES`].
    #[error("note is {len} bytes, more than the {max} allowed")]
    NoteTooLarge {
        /// The note's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The note holds an ASCII control character other than newline.
    #[error("note has control character 0x{byte:02x} at byte {offset}")]
    ControlCharacter {
        /// Byte offset in the note.
        offset: usize,
        /// The character.
        byte: u8,
    },
    /// The note does not end with a newline.
    #[error("note does not end with a newline")]
    Unterminated,
    /// No blank line followed by signature lines.
    #[error("note has no signature lines")]
    MissingSignatures,
    /// More signature lines than [`MAX_SIGNATURES`].
    #[error("note has more than {max} signature lines")]
    TooManySignatures {
        /// The limit.
        max: usize,
    },
    /// A signature line is not `— <name> <base64>` with a valid name and at
    /// least a key id and one signature byte.
    #[error("signature line {line} of the note is malformed")]
    MalformedSignature {
        /// 1-based line number in the note.
        line: usize,
    },
    /// A signature by the expected key failed to verify.
    #[error("signature line {line} by key {key_name} does not verify")]
    BadSignature {
        /// 1-based line number in the note.
        line: usize,
        /// The signer's key name.
        key_name: String,
    },
    /// No signature line is by the expected key.
    #[error("note has no signature by key {key_name} (id {})", hex::encode(.key_id))]
    NoKnownSignature {
        /// The expected key name.
        key_name: String,
        /// The expected key id.
        key_id: KeyId,
    },
    /// The checkpoint body has fewer than three lines.
    #[error("checkpoint body has no line {line}")]
    MissingBodyLine {
        /// 1-based line number that is missing.
        line: usize,
    },
    /// The origin line is empty or holds a control character.
    #[error("checkpoint origin is empty or holds a control character")]
    InvalidOrigin,
    /// The tree size line is not decimal digits without leading zeros.
    #[error("checkpoint tree size is not decimal without leading zeros")]
    TreeSizeSyntax,
    /// The tree size does not fit in 64 bits.
    #[error("checkpoint tree size does not fit in 64 bits")]
    TreeSizeOverflow,
    /// The root hash line is not standard padded base64.
    #[error("checkpoint root hash is not standard base64")]
    RootEncoding {
        /// The decoder's complaint.
        #[source]
        source: base64::DecodeError,
    },
    /// The root hash does not decode to 32 bytes.
    #[error("checkpoint root hash is {len} bytes, not 32")]
    RootLength {
        /// Decoded length.
        len: usize,
    },
    /// An extension line is empty.
    #[error("checkpoint extension line {line} is empty")]
    EmptyExtensionLine {
        /// 1-based line number in the body.
        line: usize,
    },
    /// The checkpoint is from another log.
    #[error("checkpoint origin is {found:?}, expected {expected:?}")]
    OriginMismatch {
        /// The origin asked for.
        expected: String,
        /// The origin in the checkpoint.
        found: String,
    },
    /// A key name is empty or holds whitespace, `+` or a control character.
    #[error("key name {name:?} is empty or holds whitespace, '+' or a control character")]
    InvalidKeyName {
        /// The name.
        name: String,
    },
    /// The vkey text is not `<name>+<8 hex digits>+<base64>`.
    #[error("verifier key is not <name>+<hex key id>+<base64 key>")]
    VkeySyntax,
    /// The vkey's key is not an Ed25519 key (type byte 0x01).
    #[error("verifier key has signature type 0x{found:02x}, expected 0x01 (Ed25519)")]
    VkeyAlgorithm {
        /// The type byte found.
        found: u8,
    },
    /// The vkey's key is not 32 bytes after its type byte.
    #[error("verifier key is {len} bytes, expected 1 + 32")]
    VkeyKeyLength {
        /// Decoded length including the type byte.
        len: usize,
    },
    /// The vkey's 32 bytes are not an Ed25519 public key.
    #[error("verifier key is not a valid Ed25519 public key")]
    VkeyPublicKey {
        /// The key decoder's complaint.
        #[source]
        source: ed25519_dalek::SignatureError,
    },
    /// The vkey's stated key id is not the one its name and key give.
    #[error("verifier key states id {}, its name and key give {}", hex::encode(.stated), hex::encode(.computed))]
    VkeyKeyIdMismatch {
        /// The id in the text.
        stated: KeyId,
        /// The id computed from name and key.
        computed: KeyId,
    },
}

/// A transparency-log checkpoint: which log, how many entries, which root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity, e.g. `satchel.example/audit`.
    pub origin: String,
    /// Number of leaves in the tree.
    pub size: u64,
    /// RFC 6962 tree head of those leaves.
    pub root: Hash,
}

impl Checkpoint {
    /// The note text: origin, size and base64 root, each ending in a newline.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        )
    }

    /// The signed note: body, blank line, one Ed25519 signature line.
    ///
    /// Does not check its inputs: with an origin holding a newline or control
    /// character, or an invalid key name, the note will not parse. Use
    /// [`Checkpoint::try_sign`] when either comes from outside.
    pub fn sign(&self, key: &SigningKey, key_name: &str) -> String {
        sign_unchecked(&self.body(), key, key_name)
    }

    /// [`Checkpoint::sign`] after checking the origin and the key name.
    pub fn try_sign(&self, key: &SigningKey, key_name: &str) -> Result<String, CheckpointError> {
        check_origin_line(&self.origin)?;
        check_key_name(key_name)?;
        Ok(self.sign(key, key_name))
    }

    /// `Ok` when the checkpoint is from the log `expected`.
    pub fn check_origin(&self, expected: &str) -> Result<(), CheckpointError> {
        if self.origin == expected {
            return Ok(());
        }
        Err(CheckpointError::OriginMismatch {
            expected: expected.to_owned(),
            found: self.origin.clone(),
        })
    }
}

/// The public half of a log key, as a note verifier: name, key id, key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    key_id: KeyId,
    key: VerifyingKey,
}

impl Verifier {
    /// The verifier for `key` under `name`.
    pub fn new(name: &str, key: VerifyingKey) -> Result<Verifier, CheckpointError> {
        check_key_name(name)?;
        Ok(Verifier {
            name: name.to_owned(),
            key_id: key_id(name, &key),
            key,
        })
    }

    /// Parse vkey text `<name>+<hex key id>+<base64(0x01 || key)>`.
    pub fn from_vkey(text: &str) -> Result<Verifier, CheckpointError> {
        if text.len() > MAX_VKEY_BYTES {
            return Err(CheckpointError::VkeySyntax);
        }
        // Name and hex id cannot hold '+'; the base64 key can.
        let mut parts = text.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(CheckpointError::VkeySyntax);
        };
        let verifier = Verifier::new(name, vkey_public_key(key)?)?;
        let stated = vkey_key_id(id)?;
        if stated != verifier.key_id {
            return Err(CheckpointError::VkeyKeyIdMismatch {
                stated,
                computed: verifier.key_id,
            });
        }
        Ok(verifier)
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The public key.
    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    /// The vkey text of this verifier.
    pub fn vkey(&self) -> String {
        let mut typed = Vec::with_capacity(1 + 32);
        typed.push(ED25519_TYPE);
        typed.extend_from_slice(self.key.as_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(self.key_id),
            STANDARD.encode(typed)
        )
    }
}

impl FromStr for Verifier {
    type Err = CheckpointError;

    fn from_str(text: &str) -> Result<Verifier, CheckpointError> {
        Verifier::from_vkey(text.trim_end_matches('\n'))
    }
}

/// The signed-note key id of an Ed25519 key:
/// SHA-256(name || 0x0A || 0x01 || key)[..4].
pub fn key_id(name: &str, key: &VerifyingKey) -> KeyId {
    let digest = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update([b'\n', ED25519_TYPE])
        .chain_update(key.as_bytes())
        .finalize();
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&digest[..KEY_ID_LEN]);
    id
}

/// The vkey text `<name>+<hex key id>+<base64(0x01 || key)>` of `key`.
pub fn vkey(name: &str, key: &VerifyingKey) -> Result<String, CheckpointError> {
    Ok(Verifier::new(name, *key)?.vkey())
}

/// The base64 key part of a vkey, as an Ed25519 key.
fn vkey_public_key(text: &str) -> Result<VerifyingKey, CheckpointError> {
    let bytes = STANDARD
        .decode(text)
        .map_err(|_| CheckpointError::VkeySyntax)?;
    let (&kind, key) = bytes.split_first().ok_or(CheckpointError::VkeySyntax)?;
    if kind != ED25519_TYPE {
        return Err(CheckpointError::VkeyAlgorithm { found: kind });
    }
    let key: [u8; 32] = key
        .try_into()
        .map_err(|_| CheckpointError::VkeyKeyLength { len: bytes.len() })?;
    VerifyingKey::from_bytes(&key).map_err(|source| CheckpointError::VkeyPublicKey { source })
}

/// The hex key id part of a vkey.
fn vkey_key_id(text: &str) -> Result<KeyId, CheckpointError> {
    let mut id = [0u8; KEY_ID_LEN];
    hex::decode_to_slice(text, &mut id).map_err(|_| CheckpointError::VkeySyntax)?;
    Ok(id)
}

/// `Ok` for a valid signed-note key name: non-empty, no Unicode whitespace,
/// no `+`, no control character.
fn check_key_name(name: &str) -> Result<(), CheckpointError> {
    let bad = |c: char| c.is_whitespace() || c.is_control() || c == '+';
    if name.is_empty() || name.contains(bad) {
        return Err(CheckpointError::InvalidKeyName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// `Ok` for an origin we can put on a line: non-empty, no control character.
fn check_origin_line(origin: &str) -> Result<(), CheckpointError> {
    if origin.is_empty() || origin.contains(char::is_control) {
        return Err(CheckpointError::InvalidOrigin);
    }
    Ok(())
}

/// One parsed signature line.
struct SignatureLine<'a> {
    line: usize,
    name: &'a str,
    key_id: KeyId,
    signature: Vec<u8>,
}

/// Parse a signed-note checkpoint and verify it was signed by `verifier`.
///
/// Signatures by other keys are ignored; a signature by `verifier`'s name
/// and key id that fails to verify rejects the note. The origin is not
/// checked: see [`Checkpoint::check_origin`]. Extension lines are accepted
/// and dropped.
pub fn parse_and_verify(note: &str, verifier: &Verifier) -> Result<Checkpoint, CheckpointError> {
    parse_body(verify_note(note, verifier)?)
}

/// Verify a signed note of any text against `verifier` and return its text
/// (with the final newline), under the same rules as [`parse_and_verify`].
pub fn verify_note<'a>(note: &'a str, verifier: &Verifier) -> Result<&'a str, CheckpointError> {
    let (text, signatures) = split_note(note)?;
    let first_line = text.matches('\n').count() + 2;
    let lines = parse_signature_lines(signatures, first_line)?;
    verify_signatures(text, &lines, verifier)?;
    Ok(text)
}

/// Sign `text` as a signed note with one Ed25519 signature line.
///
/// The text must be non-empty, end with a newline and hold no control
/// character other than newline; the key name must be valid.
pub fn sign_note(text: &str, key: &SigningKey, key_name: &str) -> Result<String, CheckpointError> {
    check_key_name(key_name)?;
    if let Some(offset) = text.bytes().position(|b| b < 0x20 && b != b'\n') {
        let byte = text.as_bytes()[offset];
        return Err(CheckpointError::ControlCharacter { offset, byte });
    }
    if !text.ends_with('\n') {
        return Err(CheckpointError::Unterminated);
    }
    Ok(sign_unchecked(text, key, key_name))
}

/// The note `text`, blank line, `— <key_name> <base64(key id || sig)>`.
fn sign_unchecked(text: &str, key: &SigningKey, key_name: &str) -> String {
    let signature = key.sign(text.as_bytes());
    let mut blob = Vec::with_capacity(KEY_ID_LEN + Signature::BYTE_SIZE);
    blob.extend_from_slice(&key_id(key_name, &key.verifying_key()));
    blob.extend_from_slice(&signature.to_bytes());
    format!(
        "{text}\n{SIGNATURE_PREFIX}{key_name} {}\n",
        STANDARD.encode(blob)
    )
}

/// Check the note's size and characters and split it at its last blank
/// line into body (with its final newline) and signature lines.
fn split_note(note: &str) -> Result<(&str, &str), CheckpointError> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(CheckpointError::NoteTooLarge {
            len: note.len(),
            max: MAX_NOTE_BYTES,
        });
    }
    if let Some(offset) = note.bytes().position(|b| b < 0x20 && b != b'\n') {
        let byte = note.as_bytes()[offset];
        return Err(CheckpointError::ControlCharacter { offset, byte });
    }
    if !note.ends_with('\n') {
        return Err(CheckpointError::Unterminated);
    }
    let split = note
        .rfind("\n\n")
        .ok_or(CheckpointError::MissingSignatures)?;
    let (body, signatures) = (&note[..=split], &note[split + 2..]);
    if signatures.is_empty() {
        return Err(CheckpointError::MissingSignatures);
    }
    Ok((body, signatures))
}

/// Parse the newline-terminated signature lines; `first_line` is the note
/// line number of the first.
fn parse_signature_lines(
    text: &str,
    first_line: usize,
) -> Result<Vec<SignatureLine<'_>>, CheckpointError> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    let mut lines = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        if i >= MAX_SIGNATURES {
            return Err(CheckpointError::TooManySignatures {
                max: MAX_SIGNATURES,
            });
        }
        lines.push(parse_signature_line(line, first_line + i)?);
    }
    Ok(lines)
}

/// Parse `— <name> <base64(key id || signature)>`.
fn parse_signature_line(text: &str, line: usize) -> Result<SignatureLine<'_>, CheckpointError> {
    let malformed = || CheckpointError::MalformedSignature { line };
    let rest = text.strip_prefix(SIGNATURE_PREFIX).ok_or_else(malformed)?;
    let (name, encoded) = rest.split_once(' ').ok_or_else(malformed)?;
    check_key_name(name).map_err(|_| malformed())?;
    let blob = STANDARD.decode(encoded).map_err(|_| malformed())?;
    if blob.len() <= KEY_ID_LEN {
        return Err(malformed());
    }
    let (id, signature) = blob.split_at(KEY_ID_LEN);
    let mut key_id = [0u8; KEY_ID_LEN];
    key_id.copy_from_slice(id);
    Ok(SignatureLine {
        line,
        name,
        key_id,
        signature: signature.to_vec(),
    })
}

/// Every line by `verifier`'s name and key id must verify, and there must
/// be at least one.
fn verify_signatures(
    body: &str,
    lines: &[SignatureLine<'_>],
    verifier: &Verifier,
) -> Result<(), CheckpointError> {
    let mut verified = 0usize;
    for line in lines {
        if line.name != verifier.name || line.key_id != verifier.key_id {
            continue;
        }
        verify_one(body, line, verifier)?;
        verified += 1;
    }
    if verified == 0 {
        return Err(CheckpointError::NoKnownSignature {
            key_name: verifier.name.clone(),
            key_id: verifier.key_id,
        });
    }
    Ok(())
}

/// Verify one signature line by the known key over `body`.
fn verify_one(
    body: &str,
    line: &SignatureLine<'_>,
    verifier: &Verifier,
) -> Result<(), CheckpointError> {
    let bad = || CheckpointError::BadSignature {
        line: line.line,
        key_name: line.name.to_owned(),
    };
    let signature = Signature::from_slice(&line.signature).map_err(|_| bad())?;
    verifier
        .key
        .verify_strict(body.as_bytes(), &signature)
        .map_err(|_| bad())
}

/// Parse the checkpoint body: origin, tree size, root, extension lines.
fn parse_body(body: &str) -> Result<Checkpoint, CheckpointError> {
    let text = body.strip_suffix('\n').unwrap_or(body);
    let mut lines = text.split('\n');
    let mut next = |line| {
        lines
            .next()
            .ok_or(CheckpointError::MissingBodyLine { line })
    };
    let origin = next(1)?;
    let size = next(2)?;
    let root = next(3)?;
    if origin.is_empty() {
        return Err(CheckpointError::InvalidOrigin);
    }
    let checkpoint = Checkpoint {
        origin: origin.to_owned(),
        size: parse_tree_size(size)?,
        root: parse_root(root)?,
    };
    for (i, extension) in lines.enumerate() {
        if extension.is_empty() {
            return Err(CheckpointError::EmptyExtensionLine { line: i + 4 });
        }
    }
    Ok(checkpoint)
}

/// ASCII decimal, no sign, no leading zeros unless exactly `0`.
fn parse_tree_size(text: &str) -> Result<u64, CheckpointError> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits || (text.len() > 1 && text.starts_with('0')) {
        return Err(CheckpointError::TreeSizeSyntax);
    }
    text.parse().map_err(|_| CheckpointError::TreeSizeOverflow)
}

/// Standard padded base64 of exactly 32 bytes.
fn parse_root(text: &str) -> Result<Hash, CheckpointError> {
    let bytes = STANDARD
        .decode(text)
        .map_err(|source| CheckpointError::RootEncoding { source })?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| CheckpointError::RootLength { len: bytes.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_size_is_canonical_decimal() {
        assert_eq!(parse_tree_size("0").ok(), Some(0));
        assert_eq!(parse_tree_size("10").ok(), Some(10));
        for bad in ["", "00", "01", "+1", "-1", " 1", "1 ", "0x1", "1_0"] {
            assert!(
                matches!(parse_tree_size(bad), Err(CheckpointError::TreeSizeSyntax)),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_tree_size("18446744073709551616"),
            Err(CheckpointError::TreeSizeOverflow)
        ));
        assert_eq!(parse_tree_size("18446744073709551615").ok(), Some(u64::MAX));
    }

    #[test]
    fn key_names_follow_signed_note() {
        for good in ["a", "example.com/log", "x\u{2014}y"] {
            assert!(check_key_name(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "a b",
            "a+b",
            "a\tb",
            "a\u{a0}b",
            "a\u{2003}b",
            "a\u{7f}",
        ] {
            assert!(check_key_name(bad).is_err(), "{bad:?}");
        }
    }
}
