//! Key files: the round trip, modes, never overwriting a private key, and
//! errors that name the file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use persist::keys::{self, KeyError};

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn key_files_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("log.key");
    let public = dir.path().join("log.pub");
    let k = keys::generate();
    keys::write_private(&private, &k).unwrap();
    keys::write_public(&public, &k.verifying_key()).unwrap();
    #[cfg(unix)]
    assert_eq!(mode(&private), 0o600);
    let text = std::fs::read_to_string(&private).unwrap();
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{text}");
    let text = std::fs::read_to_string(&public).unwrap();
    assert!(text.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{text}");
    assert_eq!(
        keys::read_private(&private).unwrap().to_bytes(),
        k.to_bytes()
    );
    assert_eq!(keys::read_public(&public).unwrap(), k.verifying_key());
    // Only the two files: no temporary left behind.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["log.key", "log.pub"]);
}

#[test]
fn generated_keys_differ() {
    assert_ne!(keys::generate().to_bytes(), keys::generate().to_bytes());
}

#[test]
fn private_key_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.key");
    let first = keys::generate();
    keys::write_private(&path, &first).unwrap();
    let err = keys::write_private(&path, &keys::generate()).unwrap_err();
    assert!(matches!(err, KeyError::Exists { .. }));
    assert!(err.to_string().contains(&path.display().to_string()));
    assert_eq!(
        keys::read_private(&path).unwrap().to_bytes(),
        first.to_bytes()
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temp left"
    );
    // The public key may be replaced.
    let public = dir.path().join("log.pub");
    keys::write_public(&public, &keys::generate().verifying_key()).unwrap();
    keys::write_public(&public, &first.verifying_key()).unwrap();
    assert_eq!(keys::read_public(&public).unwrap(), first.verifying_key());
}

#[test]
fn key_file_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.key");
    let garbage = dir.path().join("garbage.key");
    let big = dir.path().join("big.key");
    let public = dir.path().join("log.pub");
    std::fs::write(&garbage, "not a key\n").unwrap();
    std::fs::write(&big, vec![b'a'; 100_000]).unwrap();
    keys::write_public(&public, &keys::generate().verifying_key()).unwrap();
    let shown = |e: KeyError, p: &std::path::Path| {
        let text = e.to_string();
        assert!(text.contains(&p.display().to_string()), "{text}");
        e
    };
    assert!(matches!(
        shown(keys::read_private(&missing).unwrap_err(), &missing),
        KeyError::Io { .. }
    ));
    assert!(matches!(
        shown(keys::read_private(&garbage).unwrap_err(), &garbage),
        KeyError::PrivatePem { .. }
    ));
    assert!(matches!(
        shown(keys::read_public(&garbage).unwrap_err(), &garbage),
        KeyError::PublicPem { .. }
    ));
    assert!(matches!(
        shown(keys::read_private(&public).unwrap_err(), &public),
        KeyError::PrivatePem { .. }
    ));
    assert!(matches!(
        shown(keys::read_public(&big).unwrap_err(), &big),
        KeyError::TooLarge { len: 100_000, .. }
    ));
    let nowhere = dir.path().join("no/such/dir/log.key");
    assert!(matches!(
        shown(
            keys::write_private(&nowhere, &keys::generate()).unwrap_err(),
            &nowhere
        ),
        KeyError::Write { .. }
    ));
}

#[test]
fn key_ids_are_the_first_eight_bytes_of_the_key_hash() {
    let k = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    let id = keys::key_id(&k);
    assert_eq!(id.len(), 16);
    assert_ne!(
        id,
        keys::key_id(&ed25519_dalek::SigningKey::from_bytes(&[8; 32]).verifying_key())
    );
}
