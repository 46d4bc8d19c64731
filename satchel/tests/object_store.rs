//! Gateways that share chunks through an S3-compatible object store
//! (SeaweedFS, started by the harness) and one PostgreSQL: an image built
//! at one gateway is pulled through another whose own disk never held it;
//! a change pushed through one is pulled through the other after the
//! first lost its cache; a chunk altered in the bucket is never served; a
//! collection removes what nothing references from the bucket; a wrong key
//! pair stops a gateway at start.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{noise, same_tree};

use tpm_sim_tests::{ObjectStore, Postgres};

fn satchel(args: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_satchel"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[String]) -> String {
    let o = satchel(args);
    assert!(
        o.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

/// One organisation: a PostgreSQL, an object store, and the key pair's file.
struct Org {
    dir: tempfile::TempDir,
    pg: Postgres,
    s3: ObjectStore,
}

const PREFIX: &str = "region-1/chunks";

impl Org {
    fn new() -> Org {
        let dir = tempfile::tempdir().unwrap();
        let pg = Postgres::start().unwrap();
        let s3 = ObjectStore::start("satchel").unwrap();
        let creds = dir.path().join("s3.credentials");
        s3.write_credentials(&creds).unwrap();
        Org { dir, pg, s3 }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn s(&self, rel: &str) -> String {
        self.p(rel).to_string_lossy().into_owned()
    }

    /// `--db`, and the object store with the key pair in `creds`.
    fn shared(&self, creds: &str) -> Vec<String> {
        vec![
            "--db".to_owned(),
            self.pg.url(),
            "--chunk-store".to_owned(),
            format!("s3://{}/{PREFIX}", self.s3.bucket()),
            "--chunk-store-endpoint".to_owned(),
            self.s3.endpoint(),
            "--chunk-store-credentials".to_owned(),
            self.s(creds),
        ]
    }

    /// `satchel gateway serve` for the data directory `rel`.
    fn serve(&self, rel: &str) -> (String, common::Served) {
        let port = common::free_port();
        let mut extra = self.shared("s3.credentials");
        extra.extend(["--policy".to_owned(), self.s("policy.csv")]);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let served = common::serve(&self.p(rel), port, &extra);
        (format!("https://127.0.0.1:{port}"), served)
    }

    fn sync(&self, url: &str, verb: &str, cdir: &str, root: &str) -> std::process::Output {
        let root_flag = if verb == "pull" { "--into" } else { "--from" };
        satchel(&[
            "client".to_owned(),
            "sync".to_owned(),
            verb.to_owned(),
            "--gateway".to_owned(),
            url.to_owned(),
            "--ca".to_owned(),
            self.s("a/ca.crt"),
            "--data".to_owned(),
            self.s(cdir),
            "--image".to_owned(),
            "classroom".to_owned(),
            root_flag.to_owned(),
            self.s(root),
        ])
    }

    /// `curl --aws-sigv4` against the object (an independent S3 client).
    fn curl(&self, method: &str, key: &str, body: Option<&Path>) -> (u16, Vec<u8>) {
        let out = self.p("curl.out");
        let mut c = Command::new("curl");
        c.args(["-s", "-o"])
            .arg(&out)
            .args(["-w", "%{http_code}", "-X", method])
            .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
            .arg(format!(
                "{}:{}",
                tpm_sim_tests::seaweed::ACCESS_KEY_ID,
                self.s3.secret()
            ))
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]);
        if let Some(b) = body {
            c.arg("--data-binary").arg(format!("@{}", b.display()));
        }
        let o = c
            .arg(format!(
                "{}/{}/{PREFIX}/{key}",
                self.s3.endpoint(),
                self.s3.bucket()
            ))
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&o.stdout).parse().unwrap_or(0);
        (code, std::fs::read(&out).unwrap_or_default())
    }
}

/// `POST .../upload` of chunk frames as the device `client`: the status.
fn upload(client: &device::GatewayClient, frames: Vec<u8>) -> u16 {
    let sent = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(client.send(
            hyper::Method::POST,
            "/v1/sync/images/classroom/upload",
            "application/octet-stream",
            frames,
            None,
        ));
    sent.unwrap().0
}

/// The chunk files of a local store (`fan/id`), by id.
fn cached(store: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for fan in std::fs::read_dir(store).into_iter().flatten().flatten() {
        let name = fan.file_name().to_string_lossy().into_owned();
        if name.len() != 2 || !fan.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(fan.path()).unwrap().flatten() {
            let id = f.file_name().to_string_lossy().into_owned();
            if id.len() == 64 {
                out.push((id, f.path()));
            }
        }
    }
    out.sort();
    out
}

/// Empty a gateway's cache (its fan-out directories), as a lost disk would.
fn lose_cache(store: &Path) {
    for (_, path) in cached(store) {
        std::fs::remove_file(path).unwrap();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn gateways_share_chunks_through_the_object_store_and_never_serve_an_altered_one() {
    let org = Org::new();
    // The image, built at gateway A: its chunks go to A's disk and the bucket.
    let base = org.p("src/base-os");
    std::fs::create_dir_all(base.join("usr/bin")).unwrap();
    std::fs::write(base.join("usr/bin/tool"), noise(1_500_000, 1)).unwrap();
    std::fs::write(base.join("usr/bin/other"), noise(300_000, 2)).unwrap();
    let user = org.p("src/user-data");
    std::fs::create_dir_all(user.join("Documents")).unwrap();
    std::fs::write(user.join("Documents/notes.txt"), "first notes\n").unwrap();
    std::fs::write(
        org.p("policy.csv"),
        "g, group:class-7a, group:school\np, group:school, image, classroom, subscribe, allow\n",
    )
    .unwrap();
    let mut build = strings(&[
        "image",
        "build",
        "--data",
        &org.s("a"),
        "--image",
        "classroom",
    ]);
    build.extend(org.shared("s3.credentials"));
    build.extend([
        "--layer".to_owned(),
        format!("base-os={}", base.display()),
        "--layer".to_owned(),
        format!("user-data={}", user.display()),
    ]);
    let out = ok(&build);
    assert!(out.contains("classroom/base-os: version 1"), "{out}");
    let (a_url, _a) = org.serve("a");
    // Gateway B: the organisation's keys (shared from configuration), its
    // own empty data directory.
    std::fs::create_dir_all(org.p("b")).unwrap();
    for e in std::fs::read_dir(org.p("a")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".crt") || name.ends_with(".key") || name.ends_with(".pub") {
            std::fs::copy(e.path(), org.p("b").join(&name)).unwrap();
        }
    }
    let (b_url, _b) = org.serve("b");
    assert!(cached(&org.p("b/chunks")).is_empty());
    common::device_cert_in(
        &org.p("a"),
        &org.pg.url(),
        &org.p("c1"),
        "laptop-1",
        &["group:class-7a"],
    );
    for copy in ["c1-again", "c1-third"] {
        copy_dir(&org.p("c1"), &org.p(copy));
    }

    // Pulled through B: every chunk came from the bucket, checked, and
    // stayed in B's cache.
    let o = org.sync(&b_url, "pull", "c1", "root");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    same_tree(&base, &org.p("root/base-os"));
    same_tree(&user, &org.p("root/user-data"));
    let b_has = cached(&org.p("b/chunks"));
    assert!(!b_has.is_empty(), "B served chunks it never cached");

    // A change pushed through B reaches A, which has lost its own disk's
    // chunks: even when the bucket lost the change's chunks after the push
    // (B's cache still holds them), B's next check-in puts them back
    // before it stores a version naming them.
    std::fs::write(
        org.p("root/user-data/Documents/notes.txt"),
        noise(200_000, 9),
    )
    .unwrap();
    let o = org.sync(&b_url, "push", "c1", "root");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pushed: Vec<String> = cached(&org.p("b/chunks"))
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| !b_has.iter().any(|(had, _)| had == id))
        .collect();
    assert!(!pushed.is_empty());
    for id in &pushed {
        assert_eq!(
            org.curl("DELETE", &format!("{}/{id}", &id[..2]), None).0,
            204
        );
    }
    std::fs::write(org.p("root/user-data/Documents/more.txt"), "more\n").unwrap();
    let o = org.sync(&b_url, "push", "c1", "root");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    lose_cache(&org.p("a/chunks"));
    let o = org.sync(&a_url, "pull", "c1-again", "root2");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    same_tree(&org.p("root/user-data"), &org.p("root2/user-data"));
    same_tree(&base, &org.p("root2/base-os"));

    // Someone with write access to the bucket swaps a chunk for another
    // well-formed one: B refuses to serve it, keeps nothing of it, and the
    // device's tree gets nothing from that pull.
    let (victim, victim_path) = b_has[0].clone();
    let (_, other_path) = b_has[1].clone();
    let original = std::fs::read(&victim_path).unwrap();
    let key = format!("{}/{victim}", &victim[..2]);
    let (code, body) = org.curl("GET", &key, None);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, original, "the bucket holds the cache's bytes");
    let (code, _) = org.curl("PUT", &key, Some(&other_path));
    assert_eq!(code, 200);
    lose_cache(&org.p("b/chunks"));
    let o = org.sync(&b_url, "pull", "c1-third", "root3");
    assert!(
        !o.status.success(),
        "a pull with an altered chunk succeeded"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("500"), "{err}");
    assert!(
        !cached(&org.p("b/chunks"))
            .iter()
            .any(|(id, _)| *id == victim),
        "the altered chunk was kept in B's cache"
    );
    assert!(
        !org.p("root3/base-os/usr/bin/tool").exists()
            || std::fs::read(org.p("root3/base-os/usr/bin/tool")).unwrap()
                == std::fs::read(base.join("usr/bin/tool")).unwrap()
    );
    // Put back, the same pull completes.
    std::fs::write(org.p("original"), &original).unwrap();
    let (code, _) = org.curl("PUT", &key, Some(&org.p("original")));
    assert_eq!(code, 200);
    let o = org.sync(&b_url, "pull", "c1-third", "root3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    same_tree(&base, &org.p("root3/base-os"));

    // A device uploads another encoding of a chunk the bucket holds (at a
    // gateway whose cache lacks it): the shared object is not replaced.
    lose_cache(&org.p("b/chunks"));
    let id: sync::ChunkId = victim.parse().unwrap();
    let before = org.curl("GET", &key, None).1;
    let plain = sync::store::open_chunk(id, &before).unwrap();
    let mut z = zstd::bulk::Compressor::new(1).unwrap();
    z.include_checksum(true).unwrap();
    let other = z.compress(&plain).unwrap();
    assert_ne!(other, before);
    let mut frames = Vec::new();
    sync::wire::write_frame(&mut frames, id, &other);
    let gw = device::GatewayConfig {
        url: b_url.clone(),
        ca: org.p("a/ca.crt"),
        data: org.p("c1"),
    };
    let client = gw.device_client().unwrap();
    let status = upload(&client, frames);
    assert_eq!(status, 200);
    assert_eq!(
        org.curl("GET", &key, None).1,
        before,
        "the shared object was replaced"
    );

    // The second attacker pass: B's cache holds the chunk, the bucket has
    // lost it, and a device uploads junk under its id. Refused, and the
    // junk never reaches the bucket.
    assert_eq!(org.curl("DELETE", &key, None).0, 204);
    let mut junk = Vec::new();
    sync::wire::write_frame(&mut junk, id, &noise(5_000, 77));
    let status = upload(&client, junk);
    assert_eq!(status, 400);
    assert_eq!(
        org.curl("GET", &key, None).0,
        404,
        "junk reached the bucket"
    );
    assert_eq!(org.curl("PUT", &key, Some(&org.p("original"))).0, 200);

    // A collection removes from the bucket what no version references,
    // and keeps what one does.
    let stray = format!("ee/ee{}", "0".repeat(62));
    let (code, _) = org.curl("PUT", &stray, Some(&org.p("original")));
    assert_eq!(code, 200);
    let mut gc = strings(&[
        "gateway",
        "gc",
        "--data",
        &org.s("a"),
        "--grace",
        "0s",
        "--allow-short-grace",
        "--json",
    ]);
    gc.extend(org.shared("s3.credentials"));
    let c: serde_json::Value = serde_json::from_str(&ok(&gc)).unwrap();
    let r = &c["object_store"];
    assert!(r["removed"].as_u64().unwrap() >= 1, "{c}");
    assert!(
        r["referenced"].as_u64().unwrap() >= b_has.len() as u64,
        "{c}"
    );
    assert_eq!(org.curl("GET", &stray, None).0, 404);
    assert_eq!(org.curl("GET", &key, None).0, 200);
    lose_cache(&org.p("b/chunks"));
    let o = org.sync(&b_url, "pull", "c1-third", "root4");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    same_tree(&base, &org.p("root4/base-os"));
}

/// The attacker's review: a collection run against another database (a
/// fresh SQLite file, because `--db` was left out) found no version
/// referencing the bucket's chunks and removed them all; a build on the
/// shared database without the object store stored versions whose chunks
/// only its own disk held.
#[test]
fn a_prefix_belongs_to_one_database_and_its_database_to_the_object_store() {
    let org = Org::new();
    let src = org.p("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), noise(100_000, 3)).unwrap();
    let mut build = strings(&["image", "build", "--data", &org.s("a"), "--image", "x"]);
    build.extend(org.shared("s3.credentials"));
    build.extend(["--layer".to_owned(), format!("base-os={}", src.display())]);
    ok(&build);
    let stored = cached(&org.p("a/chunks"));
    let key = |id: &str| format!("{}/{id}", &id[..2]);
    assert_eq!(org.curl("GET", &key(&stored[0].0), None).0, 200);

    // A grace shorter than the objects' refresh, without saying so: refused.
    let mut short = strings(&["gateway", "gc", "--data", &org.s("a"), "--grace", "10m"]);
    short.extend(org.shared("s3.credentials"));
    let o = satchel(&short);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("at least 2h"), "{err}");

    // The collection with the right store and the wrong database (the
    // data directory's own SQLite): refused, and the bucket keeps all.
    std::fs::create_dir_all(org.p("other")).unwrap();
    let mut gc = strings(&[
        "gateway",
        "gc",
        "--data",
        &org.s("other"),
        "--grace",
        "0s",
        "--allow-short-grace",
    ]);
    gc.extend(org.shared("s3.credentials").into_iter().skip(2));
    let o = satchel(&gc);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("holds the chunks of another database"),
        "{err}"
    );
    for (id, _) in &stored {
        assert_eq!(org.curl("GET", &key(id), None).0, 200, "{id} was removed");
    }

    // A build on the shared database without the object store: refused.
    let o = satchel(&[
        "image".into(),
        "build".into(),
        "--data".into(),
        org.s("c"),
        "--db".into(),
        org.pg.url(),
        "--image".into(),
        "x".into(),
        "--layer".into(),
        format!("base-os={}", src.display()),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("chunks are in the object store s3://satchel/"),
        "{err}"
    );
}

/// The second attacker pass: a gateway that had versions before it was
/// given the object store recorded the store but never put those
/// versions' chunks in it, so no other gateway could serve them.
#[test]
fn adding_an_object_store_puts_the_chunks_already_held_in_it() {
    let org = Org::new();
    let src = org.p("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), noise(300_000, 5)).unwrap();
    // Built on the data directory's own SQLite, no object store.
    ok(&strings(&[
        "image",
        "build",
        "--data",
        &org.s("solo"),
        "--image",
        "x",
        "--layer",
        &format!("base-os={}", src.display()),
    ]));
    let held = cached(&org.p("solo/chunks"));
    assert!(held.len() > 3);
    // The next command on it names an object store (its own prefix).
    let prefix = "solo";
    let mut dry = strings(&["gateway", "gc", "--data", &org.s("solo"), "--dry-run"]);
    dry.extend(strings(&[
        "--chunk-store",
        &format!("s3://{}/{prefix}", org.s3.bucket()),
        "--chunk-store-endpoint",
        &org.s3.endpoint(),
        "--chunk-store-credentials",
        &org.s("s3.credentials"),
    ]));
    ok(&dry);
    for (id, path) in &held {
        let o = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
            .arg(format!(
                "{}:{}",
                tpm_sim_tests::seaweed::ACCESS_KEY_ID,
                org.s3.secret()
            ))
            .arg(format!(
                "{}/{}/{prefix}/{}/{id}",
                org.s3.endpoint(),
                org.s3.bucket(),
                &id[..2]
            ))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "200",
            "{}",
            path.display()
        );
    }
}

#[test]
fn a_wrong_key_pair_stops_a_gateway_at_start_and_names_the_store() {
    let org = Org::new();
    std::fs::write(
        org.p("wrong.credentials"),
        format!(
            "access-key-id = \"{}\"\nsecret-access-key = \"not-the-secret\"\n",
            tpm_sim_tests::seaweed::ACCESS_KEY_ID
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        org.p("wrong.credentials"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let mut serve = strings(&[
        "gateway",
        "serve",
        "--data",
        &org.s("a"),
        "--listen",
        &format!("127.0.0.1:{}", common::free_port()),
    ]);
    serve.extend(org.shared("wrong.credentials"));
    let o = satchel(&serve);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("object store s3://satchel/region-1/chunks") && err.contains("signing in"),
        "{err}"
    );
    // A credentials file others can read is refused before any request.
    std::fs::set_permissions(
        org.p("s3.credentials"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let mut build = strings(&["image", "build", "--data", &org.s("a"), "--image", "x"]);
    build.extend(org.shared("s3.credentials"));
    build.extend(["--layer".to_owned(), format!("base-os={}", org.s("a"))]);
    let o = satchel(&build);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("chmod 600"), "{err}");
}
