//! The attestation commands as an operator runs them, against a real swtpm:
//! `keygen`, `predict --sign-key`, `attest ak|quote|verify|ek-cert|
//! make-credential|activate-credential`, `seal`, `unseal` and `launch`,
//! with their exit codes (verify: 0 trusted, 1 not trusted, 2 unusable
//! input) and their refusals. `tpm2_checkquote` must accept our quotes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;
use tpm_sim_tests::Swtpm;

fn satchel(tcti: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_satchel"))
        .args(args)
        .env("SATCHEL_TPM", tcti)
        .env("TSS2_LOG", "all+none")
        .output()
        .unwrap()
}

fn ok(tcti: &str, args: &[&str]) -> String {
    let out = satchel(tcti, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A measured client: swtpm, a private chain copy measured into it, the
/// organisation's key and reference, and an AK.
struct Client {
    swtpm: Swtpm,
    dir: tempfile::TempDir,
}

impl Client {
    fn new() -> Client {
        let swtpm = Swtpm::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/boot-chain");
        std::fs::create_dir(dir.path().join("chain")).unwrap();
        for e in std::fs::read_dir(src).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.path().join("chain").join(e.file_name())).unwrap();
        }
        let c = Client { swtpm, dir };
        let t = c.tcti();
        ok(&t, &["keygen", "--out", &c.p("org.key")]);
        ok(
            &t,
            &[
                "predict",
                "--chain",
                &c.p("chain/chain.toml"),
                "--banks",
                "sha1,sha256",
                "--sign-key",
                &c.p("org.key"),
                "--out",
                &c.p("ref.json"),
            ],
        );
        ok(
            &t,
            &[
                "measure",
                "--chain",
                &c.p("chain/chain.toml"),
                "--log",
                &c.p("boot.log"),
            ],
        );
        ok(&t, &["attest", "ak", "--out", &c.p("ak.json")]);
        c
    }

    fn tcti(&self) -> String {
        self.swtpm.tcti()
    }

    fn p(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    fn quote(&self, nonce: &str, pcrs: &str, out: &str) {
        ok(
            &self.tcti(),
            &[
                "attest",
                "quote",
                "--ak",
                &self.p("ak.json"),
                "--nonce",
                nonce,
                "--pcrs",
                pcrs,
                "--log",
                &self.p("boot.log"),
                "--out",
                &self.p(out),
            ],
        );
    }

    fn verify(&self, evidence: &str, nonce: &str, extra: &[&str]) -> Output {
        let reference = self.p("ref.json");
        let key = self.p("org.key.pub");
        let mut args = vec![
            "attest",
            "verify",
            "--evidence",
            evidence,
            "--nonce",
            nonce,
            "--reference",
            &reference,
            "--reference-key",
            &key,
        ];
        args.extend_from_slice(extra);
        satchel(&self.tcti(), &args)
    }
}

const NONCE: &str = "5a7c4e1f00112233445566778899aabbccddeeff00112233445566778899aabb";

fn b64(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[test]
fn quote_verifies_and_tpm2_checkquote_accepts_it() {
    let c = Client::new();
    c.quote(NONCE, "0-9,13", "e.json");
    let out = c.verify(&c.p("e.json"), NONCE, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("trusted"));

    // The evidence shape of the contract.
    let e: Value = serde_json::from_str(&std::fs::read_to_string(c.p("e.json")).unwrap()).unwrap();
    for k in [
        "quote",
        "signature",
        "ak_pem",
        "nonce",
        "pcrs",
        "event_logs",
    ] {
        assert!(e.get(k).is_some(), "evidence lacks {k}");
    }
    assert_eq!(e["nonce"], NONCE);
    assert_eq!(e["pcrs"]["sha256"].as_object().unwrap().len(), 11);

    // tpm2_checkquote on the extracted quote and signature.
    let d = c.dir.path();
    std::fs::write(d.join("q.bin"), b64(e["quote"].as_str().unwrap())).unwrap();
    std::fs::write(d.join("s.bin"), b64(e["signature"].as_str().unwrap())).unwrap();
    std::fs::write(d.join("ak.pem"), e["ak_pem"].as_str().unwrap()).unwrap();
    let check = Command::new("tpm2_checkquote")
        .args([
            "-u",
            &c.p("ak.pem"),
            "-m",
            &c.p("q.bin"),
            "-s",
            &c.p("s.bin"),
            "-q",
            NONCE,
            "-g",
            "sha256",
        ])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // ... and rejects it for another nonce.
    let other = Command::new("tpm2_checkquote")
        .args([
            "-u",
            &c.p("ak.pem"),
            "-m",
            &c.p("q.bin"),
            "-s",
            &c.p("s.bin"),
            "-q",
            "00",
            "-g",
            "sha256",
        ])
        .output()
        .unwrap();
    assert!(!other.status.success());

    // Pinning the enrolled AK (AK.json or PEM) still passes.
    assert_eq!(
        code(&c.verify(&c.p("e.json"), NONCE, &["--ak", &c.p("ak.json")])),
        0
    );
    assert_eq!(
        code(&c.verify(&c.p("e.json"), NONCE, &["--ak", &c.p("ak.pem")])),
        0
    );
}

#[test]
fn verify_exit_codes_and_json_verdicts() {
    let c = Client::new();
    c.quote(NONCE, "0-9,13", "e.json");
    // Another nonce: 1, with the reason on stderr.
    let out = c.verify(&c.p("e.json"), "00", &[]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("nonce"), "{}", stderr(&out));
    // --json: the verdict on stdout.
    let out = c.verify(&c.p("e.json"), "00", &["--json"]);
    assert_eq!(code(&out), 1);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["trusted"], false);
    assert!(v["failures"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["check"] == "nonce"));
    let out = c.verify(&c.p("e.json"), NONCE, &["--json"]);
    assert_eq!(code(&out), 0);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["trusted"], true);
    assert_eq!(v["failures"].as_array().unwrap().len(), 0);

    // Unusable input: 2.
    std::fs::write(c.p("junk.json"), b"{\"quote\": 1}").unwrap();
    assert_eq!(code(&c.verify(&c.p("junk.json"), NONCE, &[])), 2);
    assert_eq!(code(&c.verify(&c.p("missing.json"), NONCE, &[])), 2);
    assert_eq!(code(&c.verify(&c.p("e.json"), "xyz", &[])), 2);

    // A reference edited after signing: not trusted (1), named.
    let r = std::fs::read_to_string(c.p("ref.json")).unwrap();
    std::fs::write(
        c.p("ref.json"),
        r.replacen("\"sample\"", "\"x\"", 1)
            .replacen("\"chain\"", "\"evil\"", 1),
    )
    .unwrap();
    let out = c.verify(&c.p("e.json"), NONCE, &[]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("changed after signing"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_changed_stage_fails_verification_and_launch_naming_it() {
    let c = Client::new();
    let t = c.tcti();
    std::fs::write(c.p("disk.key"), b"0123456789abcdef0123456789abcdef").unwrap();
    ok(
        &t,
        &[
            "seal",
            "--pcrs",
            "4,8,9",
            "--in",
            &c.p("disk.key"),
            "--out",
            &c.p("disk.sealed"),
        ],
    );
    assert_eq!(
        satchel(&t, &["unseal", "--in", &c.p("disk.sealed")]).stdout,
        b"0123456789abcdef0123456789abcdef"
    );

    // The honest launch: the command gets the key through a memfd path, and
    // its exit status is passed on.
    let script = "test \"$(cat \"$SATCHEL_KEY_FILE\")\" = 0123456789abcdef0123456789abcdef && \
                  readlink \"$SATCHEL_KEY_FILE\" && echo launched; exit 7";
    let launch_with = |run_file: &str, script: &str| {
        satchel(
            &t,
            &[
                "launch",
                "--log",
                &c.p("boot.log"),
                "--reference",
                &c.p("ref.json"),
                "--reference-key",
                &c.p("org.key.pub"),
                "--sealed",
                &c.p("disk.sealed"),
                "--run-file",
                &format!("hypervisor={run_file}"),
                "--",
                "sh",
                "-c",
                script,
            ],
        )
    };
    let hv = c.p("chain/hypervisor.bin");
    let launch = |script: &str| launch_with(&hv, script);

    // Regression (issue 22, item 8): what runs is what was measured. A file
    // swapped since the measurement is refused, naming the stage, before the
    // key is unsealed.
    let mut swapped = std::fs::read(&hv).unwrap();
    swapped[0] ^= 1;
    std::fs::write(c.p("hv-swapped.bin"), &swapped).unwrap();
    let out = launch_with(&c.p("hv-swapped.bin"), "echo ran");
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not what stage \"hypervisor\" measured"),
        "{}",
        stderr(&out)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ran"));
    std::fs::copy(&hv, c.p("hv-original.bin")).unwrap();
    // Rewriting the file after the check changes nothing the command reads.
    let rewrite = format!(
        "echo replaced > {hv} && cmp \"$SATCHEL_FILE_HYPERVISOR\" {} && echo same-content; cp {} {hv}",
        c.p("hv-original.bin"),
        c.p("hv-original.bin")
    );
    let script = format!("{script}; {rewrite}; exit 7");
    let script = script.replace("echo launched; exit 7;", "echo launched;");
    let out = launch(&script);
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("/memfd:satchel-disk-key"), "{stdout}");
    assert!(stdout.contains("launched"));
    assert!(stdout.contains("same-content"), "{stdout}");

    // Regression (issue 22, item 7): once launched, this boot cannot unseal
    // the key again (the launch PCR is closed), through launch or unseal;
    // and the closing separator is logged, so the boot still attests.
    let out = launch("echo second launch");
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("did not unseal"), "{}", stderr(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("second launch"));
    assert_eq!(
        code(&satchel(&t, &["unseal", "--in", &c.p("disk.sealed")])),
        1
    );
    ok(
        &t,
        &[
            "attest",
            "quote",
            "--ak",
            &c.p("ak.json"),
            "--nonce",
            NONCE,
            "--pcrs",
            "0-9,13",
            "--log",
            &c.p("boot.log"),
            "--out",
            &c.p("after-launch.json"),
        ],
    );
    let out = c.verify(&c.p("after-launch.json"), NONCE, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    // A second boot with a changed hypervisor: a fresh TPM, same sealed key
    // file is of no use, and both verify and launch name the stage.
    let tampered = Swtpm::start().unwrap();
    let t2 = tampered.tcti();
    let mut hv = std::fs::read(c.p("chain/hypervisor.bin")).unwrap();
    hv[0] ^= 0x20;
    std::fs::write(c.p("chain/hypervisor.bin"), hv).unwrap();
    ok(
        &t2,
        &[
            "measure",
            "--chain",
            &c.p("chain/chain.toml"),
            "--log",
            &c.p("boot2.log"),
        ],
    );
    ok(&t2, &["attest", "ak", "--out", &c.p("ak2.json")]);
    ok(
        &t2,
        &[
            "seal",
            "--pcrs",
            "4,8,9",
            "--in",
            &c.p("disk.key"),
            "--out",
            &c.p("disk2.sealed"),
        ],
    );
    ok(
        &t2,
        &[
            "attest",
            "quote",
            "--ak",
            &c.p("ak2.json"),
            "--nonce",
            NONCE,
            "--pcrs",
            "0-9,13",
            "--log",
            &c.p("boot2.log"),
            "--out",
            &c.p("e2.json"),
        ],
    );
    let out = c.verify(&c.p("e2.json"), NONCE, &[]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("stage \"hypervisor\""),
        "{}",
        stderr(&out)
    );

    let marker = c.dir.path().join("ran");
    let out = satchel(
        &t2,
        &[
            "launch",
            "--log",
            &c.p("boot2.log"),
            "--reference",
            &c.p("ref.json"),
            "--reference-key",
            &c.p("org.key.pub"),
            "--sealed",
            &c.p("disk2.sealed"),
            "--",
            "touch",
            marker.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&out), 1);
    assert!(!marker.exists(), "the guest ran on a tampered chain");
    assert!(stderr(&out).contains("hypervisor"), "{}", stderr(&out));

    // An extend after sealing: unseal refuses, launch refuses.
    ok(
        &t,
        &[
            "measure",
            "--chain",
            &c.p("chain/chain.toml"),
            "--log",
            &c.p("boot.log"),
        ],
    );
    let out = satchel(&t, &["unseal", "--in", &c.p("disk.sealed")]);
    assert_eq!(code(&out), 1);
    assert!(out.stdout.is_empty());
    assert!(stderr(&out).contains("no longer hold"), "{}", stderr(&out));
}

#[test]
fn ek_certificate_and_credential_round_trip_through_the_cli() {
    let swtpm = Swtpm::start_with_ek_cert(&["sha256"]).unwrap();
    let t = swtpm.tcti();
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let ca = swtpm.ek_ca_dir();
    let out = ok(
        &t,
        &[
            "attest",
            "ek-cert",
            "--out",
            &p("ek.der"),
            "--ca-dir",
            ca.to_str().unwrap(),
        ],
    );
    assert!(out.contains("chains to"), "{out}");
    // Against an empty CA directory: refused.
    std::fs::create_dir(p("empty")).unwrap();
    assert_ne!(
        code(&satchel(
            &t,
            &["attest", "ek-cert", "--ca-dir", &p("empty")]
        )),
        0
    );

    ok(
        &t,
        &["attest", "ak", "--alg", "rsa-2048", "--out", &p("ak.json")],
    );
    std::fs::write(p("secret.bin"), b"enrollment secret").unwrap();
    ok(
        &t,
        &[
            "attest",
            "make-credential",
            "--ek-cert",
            &p("ek.der"),
            "--ca-dir",
            ca.to_str().unwrap(),
            "--ak",
            &p("ak.json"),
            "--secret",
            &p("secret.bin"),
            "--out",
            &p("cred.json"),
        ],
    );
    ok(
        &t,
        &[
            "attest",
            "activate-credential",
            "--ak",
            &p("ak.json"),
            "--credential",
            &p("cred.json"),
            "--out",
            &p("got.bin"),
        ],
    );
    assert_eq!(std::fs::read(p("got.bin")).unwrap(), b"enrollment secret");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(p("got.bin")).unwrap().permissions()
        ) & 0o777,
        0o600
    );
    // The AK file refuses to be overwritten.
    assert_ne!(
        code(&satchel(&t, &["attest", "ak", "--out", &p("ak.json")])),
        0
    );
}

/// Regression (issue 22, item 6): the text of a data stage (the hypervisor's
/// command line, whose digest is the hash of that text) edited in the
/// evidence's log: the PCRs still replay, but the evidence is untrusted,
/// naming the event and its stage.
#[test]
fn data_that_was_never_measured_makes_the_evidence_untrusted() {
    let c = Client::new();
    c.quote(NONCE, "0-9,13", "e.json");
    assert_eq!(code(&c.verify(&c.p("e.json"), NONCE, &[])), 0);
    let mut evidence: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.p("e.json")).unwrap()).unwrap();
    let log = evidence["event_logs"][0].as_str().unwrap().to_owned();
    let mut bytes = b64(&log);
    let measured = b"satchel.mode=closed";
    let at = bytes
        .windows(measured.len())
        .position(|w| w == measured)
        .expect("the command line is in the log");
    bytes[at..at + measured.len()].copy_from_slice(b"satchel.mode=open!!");
    evidence["event_logs"][0] = serde_json::json!(base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        &bytes
    ));
    std::fs::write(c.p("edited.json"), evidence.to_string()).unwrap();
    let out = c.verify(&c.p("edited.json"), NONCE, &[]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("stage \"hypervisor-cmdline\"")
            && stderr(&out).contains("not what was measured"),
        "{}",
        stderr(&out)
    );
}

/// A client whose disk key (32 known bytes, `disk.key`) is sealed to a new
/// policy key (`policy.key`) in `disk.sealed`.
fn sealed_to_policy_key() -> Client {
    let c = Client::new();
    let t = c.tcti();
    std::fs::write(c.p("disk.key"), b"0123456789abcdef0123456789abcdef").unwrap();
    ok(&t, &["keygen", "--p256", "--out", &c.p("policy.key")]);
    ok(
        &t,
        &[
            "seal",
            "--policy-key",
            &c.p("policy.key.pub"),
            "--in",
            &c.p("disk.key"),
            "--out",
            &c.p("disk.sealed"),
        ],
    );
    c
}

#[test]
fn a_disk_key_sealed_to_the_policy_key_unseals_with_a_signed_policy_from_the_reference() {
    let c = sealed_to_policy_key();
    let t = c.tcti();
    let sign = |reference: &str, out: &str| {
        ok(
            &t,
            &[
                "pcr-policy",
                "sign",
                "--reference",
                &c.p(reference),
                "--reference-key",
                &c.p("org.key.pub"),
                "--pcrs",
                "4,8,9",
                "--sign-key",
                &c.p("policy.key"),
                "--out",
                &c.p(out),
            ],
        )
    };
    sign("ref.json", "v1.json");
    let unseal = |policy: &str| {
        satchel(
            &t,
            &[
                "unseal",
                "--in",
                &c.p("disk.sealed"),
                "--policy-key",
                &c.p("policy.key.pub"),
                "--policy",
                &c.p(policy),
            ],
        )
    };
    let out = unseal("v1.json");
    assert_eq!(
        out.stdout,
        b"0123456789abcdef0123456789abcdef",
        "{}",
        stderr(&out)
    );
    // The next image's reference (a changed hypervisor): its policy does not
    // unseal on this boot, and needs no new sealing for the next.
    let mut hv = std::fs::read(c.p("chain/hypervisor.bin")).unwrap();
    hv[0] ^= 1;
    std::fs::write(c.p("chain/hypervisor.bin"), &hv).unwrap();
    ok(
        &t,
        &[
            "predict",
            "--chain",
            &c.p("chain/chain.toml"),
            "--banks",
            "sha256",
            "--sign-key",
            &c.p("org.key"),
            "--out",
            &c.p("ref2.json"),
        ],
    );
    sign("ref2.json", "v2.json");
    let out = unseal("v2.json");
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    // A policy edited after signing, or signed by another key, is refused.
    let mut forged: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.p("v2.json")).unwrap()).unwrap();
    let v1: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.p("v1.json")).unwrap()).unwrap();
    forged["pcrs"] = v1["pcrs"].clone();
    std::fs::write(c.p("forged.json"), forged.to_string()).unwrap();
    assert_ne!(code(&unseal("forged.json")), 0);
    // Without the policy: said how to give it.
    let out = satchel(&t, &["unseal", "--in", &c.p("disk.sealed")]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("--policy-key"), "{}", stderr(&out));
    // Signed from the TPM now (a golden machine before its launch): unseals.
    ok(
        &t,
        &[
            "pcr-policy",
            "sign",
            "--from-tpm",
            "--pcrs",
            "4,8,9",
            "--sign-key",
            &c.p("policy.key"),
            "--out",
            &c.p("tpm.json"),
        ],
    );
    assert_eq!(
        unseal("tpm.json").stdout,
        b"0123456789abcdef0123456789abcdef"
    );
    // A policy that holds the launch PCR at another value than zero would
    // unseal after the launch: the gate refuses to use it.
    let key_pem = std::fs::read_to_string(c.p("policy.key")).unwrap();
    let key = <p256::ecdsa::SigningKey as p256::pkcs8::DecodePrivateKey>::from_pkcs8_pem(&key_pem)
        .unwrap();
    let tpm_policy: attest::tpm::SignedPolicy =
        serde_json::from_slice(&std::fs::read(c.p("tpm.json")).unwrap()).unwrap();
    let mut values: std::collections::BTreeMap<u32, Vec<u8>> = tpm_policy
        .pcrs
        .iter()
        .map(|(i, v)| (*i, hex::decode(v).unwrap()))
        .collect();
    values.insert(15, vec![9; 32]);
    let open =
        attest::tpm::SignedPolicy::sign(&key, 1, 1, attest::HashAlg::Sha256, &values).unwrap();
    std::fs::write(c.p("open.json"), serde_json::to_vec(&open).unwrap()).unwrap();
    let launch = |policy: &str| {
        satchel(
            &t,
            &[
                "launch", "--log", &c.p("boot.log"), "--reference", &c.p("ref.json"),
                "--reference-key", &c.p("org.key.pub"), "--sealed", &c.p("disk.sealed"),
                "--policy-key", &c.p("policy.key.pub"), "--policy", &c.p(policy), "--", "sh", "-c",
                "test \"$(cat \"$SATCHEL_KEY_FILE\")\" = 0123456789abcdef0123456789abcdef && echo launched",
            ],
        )
    };
    let out = launch("open.json");
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("launch PCR 15"), "{}", stderr(&out));
    // The gate with the policy: launched once; the launch PCR closed after
    // it, so the same boot cannot unseal again.
    let out = launch("v1.json");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "launched");
    assert_eq!(code(&unseal("v1.json")), 1);
    // After the launch, signing from this TPM is refused: PCR 15 is closed.
    let out = satchel(
        &t,
        &[
            "pcr-policy",
            "sign",
            "--from-tpm",
            "--pcrs",
            "4,8,9",
            "--sign-key",
            &c.p("policy.key"),
            "--out",
            &c.p("late.json"),
        ],
    );
    assert_ne!(code(&out), 0);
    assert!(stderr(&out).contains("not zero"), "{}", stderr(&out));
}

/// The attacker's review: a launch that unsealed the key but then failed
/// (here: a policy whose epoch is too far above the counter to raise it)
/// left the launch PCR open, so whatever ran next could unseal the key
/// again on that boot. Reproduced first: the unseal after it succeeded.
#[test]
fn a_launch_that_fails_after_the_unseal_still_closes_the_launch_pcr() {
    let c = sealed_to_policy_key();
    let t = c.tcti();
    for (out, epoch) in [("v1.json", "1"), ("jump.json", "5000")] {
        ok(
            &t,
            &[
                "pcr-policy",
                "sign",
                "--reference",
                &c.p("ref.json"),
                "--reference-key",
                &c.p("org.key.pub"),
                "--pcrs",
                "4,8,9",
                "--epoch",
                epoch,
                "--sign-key",
                &c.p("policy.key"),
                "--out",
                &c.p(out),
            ],
        );
    }
    let out = satchel(
        &t,
        &[
            "launch",
            "--log",
            &c.p("boot.log"),
            "--reference",
            &c.p("ref.json"),
            "--reference-key",
            &c.p("org.key.pub"),
            "--sealed",
            &c.p("disk.sealed"),
            "--policy-key",
            &c.p("policy.key.pub"),
            "--policy",
            &c.p("jump.json"),
            "--",
            "sh",
            "-c",
            "echo launched",
        ],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("more than 1024"), "{}", stderr(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("launched"));
    let out = satchel(
        &t,
        &[
            "unseal",
            "--in",
            &c.p("disk.sealed"),
            "--policy-key",
            &c.p("policy.key.pub"),
            "--policy",
            &c.p("v1.json"),
        ],
    );
    assert_eq!(
        code(&out),
        1,
        "the key unsealed again after the failed launch"
    );
}
