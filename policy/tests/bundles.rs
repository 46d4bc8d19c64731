//! Signed bundles: the honest bundle verifies; an edited one, one signed by
//! another key, and an older one (rollback) are refused; the accepted
//! version survives in the state file; modes resolve per group.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use policy::{Bundle, BundleError, BundleManifest, Mode};

const POLICY: &str = "g, device:a, group:7a\ng, group:7a, group:school\ng, device:b, group:7b\np, group:school, image, classroom, subscribe, allow\n";

fn key() -> SigningKey {
    SigningKey::generate(&mut rand_core::OsRng)
}

fn manifest(version: u64, modes: &[(&str, Mode)]) -> BundleManifest {
    BundleManifest {
        format: policy::bundle::FORMAT.to_owned(),
        version,
        created: "2026-11-23T00:00:00Z".to_owned(),
        default_mode: Mode::Lockdown,
        group_modes: modes
            .iter()
            .map(|(g, m)| ((*g).to_owned(), *m))
            .collect::<BTreeMap<_, _>>(),
        policy: POLICY.to_owned(),
    }
}

#[test]
fn signature_key_and_edits() {
    let k = key();
    let signed = manifest(5, &[]).sign(&k).unwrap();
    let b = Bundle::verify(signed.as_bytes(), &k.verifying_key(), None).unwrap();
    assert_eq!(b.manifest.version, 5);
    assert_eq!(b.policy.rules.len(), 1);

    // Any edit inside the signed part: refused.
    for (from, to) in [
        ("\"version\": 5", "\"version\": 6"),
        ("classroom", "classroom2"),
        ("lockdown", "monitor"),
    ] {
        let edited = signed.replacen(from, to, 1);
        assert_ne!(edited, signed, "{from}");
        assert!(
            matches!(
                Bundle::verify(edited.as_bytes(), &k.verifying_key(), None),
                Err(BundleError::BadSignature)
            ),
            "{from}"
        );
    }
    // Another key.
    let other = key();
    assert!(matches!(
        Bundle::verify(
            manifest(5, &[]).sign(&other).unwrap().as_bytes(),
            &k.verifying_key(),
            None
        ),
        Err(BundleError::WrongKey { .. })
    ));
    // Truncated, garbage.
    assert!(Bundle::verify(
        &signed.as_bytes()[..signed.len() / 2],
        &k.verifying_key(),
        None
    )
    .is_err());
    assert!(Bundle::verify(b"{}", &k.verifying_key(), None).is_err());
    // An invalid policy cannot even be signed.
    let mut bad = manifest(1, &[]);
    bad.policy = "p, x, y".to_owned();
    assert!(matches!(bad.sign(&k), Err(BundleError::Policy(_))));
}

#[test]
fn rollback_is_refused_and_the_version_is_remembered() {
    let k = key();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("bundle.version");
    let v5 = manifest(5, &[]).sign(&k).unwrap();
    let v4 = manifest(4, &[]).sign(&k).unwrap();
    let v6 = manifest(6, &[]).sign(&k).unwrap();
    // No state: anything valid is accepted, and recorded.
    Bundle::accept(v5.as_bytes(), &k.verifying_key(), &state).unwrap();
    assert_eq!(std::fs::read_to_string(&state).unwrap().trim(), "5");
    // Same version again: fine. Older: rollback.
    Bundle::accept(v5.as_bytes(), &k.verifying_key(), &state).unwrap();
    match Bundle::accept(v4.as_bytes(), &k.verifying_key(), &state) {
        Err(BundleError::Rollback {
            held: 5,
            offered: 4,
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&state).unwrap().trim(), "5");
    // Newer: accepted and recorded; the older one stays refused.
    Bundle::accept(v6.as_bytes(), &k.verifying_key(), &state).unwrap();
    assert!(Bundle::accept(v5.as_bytes(), &k.verifying_key(), &state).is_err());
    // A refused signature does not move the version either.
    let forged = manifest(9, &[]).sign(&key()).unwrap();
    assert!(Bundle::accept(forged.as_bytes(), &k.verifying_key(), &state).is_err());
    assert_eq!(std::fs::read_to_string(&state).unwrap().trim(), "6");
    // A corrupt state file is an error, not a reset.
    std::fs::write(&state, "not a number").unwrap();
    assert!(matches!(
        Bundle::accept(v6.as_bytes(), &k.verifying_key(), &state),
        Err(BundleError::State { .. })
    ));
}

#[test]
fn modes_resolve_per_group_strictest_first() {
    let k = key();
    let signed = manifest(
        1,
        &[
            ("group:school", Mode::Monitor),
            ("group:7b", Mode::Lockdown),
        ],
    )
    .sign(&k)
    .unwrap();
    let b = Bundle::verify(signed.as_bytes(), &k.verifying_key(), None).unwrap();
    let groups = policy::closure(&b.policy.memberships);
    // device:a is in 7a, in school (monitor).
    assert_eq!(b.mode_for("device:a", &groups), Mode::Monitor);
    // device:b is in 7b (lockdown), not in school.
    assert_eq!(b.mode_for("device:b", &groups), Mode::Lockdown);
    // Anyone else: the default.
    assert_eq!(b.mode_for("device:z", &groups), Mode::Lockdown);
}
