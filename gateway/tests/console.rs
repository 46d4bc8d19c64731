//! The web console against a real client: curl (with a cookie jar, as a
//! browser keeps one), on a running gateway (`console_browser.rs` drives
//! headless Chromium through the same pages). Sign-in
//! by one-time link and by admin certificate, the session cookie's flags,
//! CSRF and cross-site refusals, every change audited with the admin's
//! name, the policy tester naming the deciding rule, an audit entry's
//! inclusion proof checked against the signed checkpoint, and revocation
//! ending a session.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;
use common::Running;

struct Console {
    _dir: tempfile::TempDir,
    data: PathBuf,
    gw: Running,
    rt: tokio::runtime::Runtime,
    db: gateway::state::Db,
}

impl Console {
    fn start() -> Console {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("gw");
        let mut config = gateway::ServeConfig::new(data.clone(), "127.0.0.1:0".parse().unwrap());
        config.checkpoint_every = Duration::from_secs(1);
        let gw = Running::with(config);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let url = format!("sqlite:{}", data.join("satchel.db").display());
        let db = rt.block_on(async {
            let (pool, _) = persist::db::connect(&url).await.unwrap();
            gateway::state::Db::new(pool).await.unwrap()
        });
        Console {
            _dir: dir,
            data,
            gw,
            rt,
            db,
        }
    }

    fn link(&self, admin: &str) -> String {
        let t = self
            .rt
            .block_on(self.db.make_console_link(admin, Duration::from_secs(600)))
            .unwrap();
        format!("https://127.0.0.1:{}/console/login?token={t}", self.gw.port)
    }

    /// An enrolled device, as enrollment leaves it.
    fn enrolled(&self, id: &str, groups: &[&str]) {
        let groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
        self.rt.block_on(async {
            let t = self
                .db
                .make_token(id, &groups, Duration::from_secs(60))
                .await
                .unwrap();
            let d = gateway::state::Device {
                device_id: id.to_owned(),
                groups: groups.clone(),
                ak_pem: String::new(),
                enrolled_ms: audit::batch::now_ms(),
                revoked_ms: None,
            };
            assert!(self.db.enroll(&t, &d).await.unwrap());
        });
    }

    /// curl with `jar` as its cookie jar: (status, headers, body).
    fn curl(&self, jar: &Path, path_or_url: &str, extra: &[&str]) -> (String, String, String) {
        let url = if path_or_url.starts_with("https://") {
            path_or_url.to_owned()
        } else {
            format!("https://127.0.0.1:{}{path_or_url}", self.gw.port)
        };
        let headers = jar.with_extension("headers");
        let o = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
            .arg("--cacert")
            .arg(self.data.join("ca.crt"))
            .arg("-b")
            .arg(jar)
            .arg("-c")
            .arg(jar)
            .arg("-D")
            .arg(&headers)
            .args(extra)
            .arg(url)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (
            code.to_owned(),
            std::fs::read_to_string(&headers).unwrap_or_default(),
            body.to_owned(),
        )
    }

    fn entries(&self) -> Vec<audit::entry::Entry> {
        let url = format!("sqlite:{}", self.data.join("satchel.db").display());
        self.rt.block_on(async {
            let s = audit::store::Store::open(&url).await.unwrap();
            s.entries(0, None, None)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.entry)
                .collect()
        })
    }
}

/// The CSRF token in a page's forms.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..at + 48].to_owned()
}

#[test]
fn the_console_signs_in_decides_changes_and_audits_them() {
    let c = Console::start();
    c.enrolled("laptop-17", &["group:class-7a"]);
    c.enrolled("laptop-18", &[]);
    let jar = c.data.parent().unwrap().join("jar");

    // Without a session: the sign-in page, which says how to get in.
    let (code, _, body) = c.curl(&jar, "/console/", &[]);
    assert_eq!(code, "401", "{body}");
    assert!(body.contains("satchel gateway console-link"), "{body}");

    // A one-time link: a session cookie only the gateway's pages get.
    let link = c.link("alice");
    let (code, headers, _) = c.curl(&jar, &link, &[]);
    assert_eq!(code, "303", "{headers}");
    let set = headers
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {headers}"));
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/console/"] {
        assert!(set.contains(flag), "{set}");
    }
    // Gone when the browser closes (a shared staff-room PC).
    assert!(
        !set.contains("Max-Age") && !set.contains("Expires"),
        "{set}"
    );
    // Used once: a second use (a link seen over a shoulder) is refused.
    let other = c.data.parent().unwrap().join("other-jar");
    let (code, _, body) = c.curl(&other, &link, &[]);
    assert_eq!(code, "401");
    assert!(body.contains("was used already"), "{body}");

    // The fleet: both devices, with their groups.
    let (code, headers, page) = c.curl(&jar, "/console/", &[]);
    assert_eq!(code, "200", "{page}");
    assert!(
        page.contains("laptop-17") && page.contains("laptop-18"),
        "{page}"
    );
    assert!(page.contains("group:class-7a"), "{page}");
    assert!(headers.contains("default-src 'none'"), "{headers}");
    assert!(headers
        .to_ascii_lowercase()
        .contains("x-frame-options: deny"));
    let csrf = csrf_of(&page);

    // Changes need the session's CSRF token, and no other site's origin.
    let (code, _, _) = c.curl(
        &jar,
        "/console/tokens",
        &["-d", "device_id=laptop-19&csrf=wrong"],
    );
    assert_eq!(code, "403");
    let (code, _, _) = c.curl(
        &jar,
        "/console/tokens",
        &[
            "-d",
            &format!("device_id=laptop-19&csrf={csrf}"),
            "-H",
            "Origin: https://evil.example",
        ],
    );
    assert_eq!(code, "403");
    // A token, as text and as a QR code, that enrolls laptop-19.
    let (code, _, page) = c.curl(
        &jar,
        "/console/tokens",
        &[
            "-d",
            &format!("device_id=laptop-19&groups=group:class-7b&ttl_h=2&csrf={csrf}"),
        ],
    );
    assert_eq!(code, "200", "{page}");
    assert!(page.contains("<svg"), "{page}");
    let at = page.find("class=\"token\"><code>").unwrap() + 20;
    let token = &page[at..at + 48];
    let grant = c.rt.block_on(c.db.check_token(token)).unwrap().unwrap();
    assert_eq!(grant.device_id, "laptop-19");
    assert_eq!(grant.groups, vec!["group:class-7b".to_owned()]);

    // Revoke from the fleet page.
    let (code, _, page) = c.curl(
        &jar,
        "/console/revoke",
        &["-d", &format!("device_id=laptop-18&csrf={csrf}")],
    );
    assert_eq!(code, "200", "{page}");
    assert!(page.contains("laptop-18 is revoked"), "{page}");
    let d = c.rt.block_on(c.db.device("laptop-18")).unwrap().unwrap();
    assert!(d.revoked_ms.is_some());

    // The policy: a broken one is refused and changes nothing; a good one is
    // in force at once, and the tester names the deciding line.
    let (code, _, page) = c.curl(
        &jar,
        "/console/policy",
        &[
            "--data-urlencode",
            "text=p, device:laptop-17, url",
            "-d",
            &format!("csrf={csrf}"),
        ],
    );
    assert_eq!(code, "400", "{page}");
    assert!(page.contains("Not put in force"), "{page}");
    let policy = "p, group:class-7a, url, https://en.wikipedia.org/wiki/*, GET, allow\n\
                  p, group:class-7a, url, https://en.wikipedia.org/wiki/Special:*, *, deny\n\
                  g, device:laptop-17, group:class-7a\n";
    let (code, _, page) = c.curl(
        &jar,
        "/console/policy",
        &[
            "--data-urlencode",
            &format!("text={policy}"),
            "-d",
            &format!("csrf={csrf}"),
        ],
    );
    assert_eq!(code, "200", "{page}");
    assert!(page.contains("In force now: 2 rules"), "{page}");
    let test = |object: &str| {
        let (code, _, page) = c.curl(
            &jar,
            "/console/policy/test",
            &[
                "-d",
                &format!("device=laptop-17&method=GET&csrf={csrf}"),
                "--data-urlencode",
                &format!("object={object}"),
            ],
        );
        assert_eq!(code, "200", "{page}");
        page
    };
    let page = test("https://en.wikipedia.org/wiki/Rust");
    assert!(
        page.contains("allowed") && page.contains("Line 1 decides"),
        "{page}"
    );
    let page = test("https://en.wikipedia.org/wiki//Special%3ARandom");
    assert!(
        page.contains("denied") && page.contains("Line 2 decides"),
        "{page}"
    );
    let page = test("https://example.org/");
    assert!(page.contains("the default is deny"), "{page}");

    // Every change is in the audit trail under alice's name.
    let entries = c.entries();
    let by_alice = |kind: &str, decision: &str| {
        entries
            .iter()
            .any(|e| e.kind == kind && e.actor == "admin:alice" && e.decision == decision)
    };
    assert!(by_alice("console", "allowed"), "sign-in: {entries:?}");
    assert!(by_alice("console", "refused"), "the CSRF refusals");
    assert!(by_alice("admin", "enroll-token"));
    assert!(by_alice("admin", "revoked"));
    assert!(by_alice("admin", "replaced"));
    assert!(entries
        .iter()
        .any(|e| e.kind == "console" && e.actor == "anonymous" && e.decision == "refused"));

    // The trail in the console: filtered, and an entry's inclusion proof
    // checked against the signed checkpoint (made every second here).
    let (code, _, page) = c.curl(&jar, "/console/audit?kind=admin&q=laptop-18", &[]);
    assert_eq!(code, "200", "{page}");
    assert!(
        page.contains("revoked") && !page.contains("enroll-token"),
        "{page}"
    );
    let seq = entries
        .iter()
        .find(|e| e.decision == "revoked")
        .unwrap()
        .seq;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (code, _, page) = c.curl(&jar, &format!("/console/audit/{seq}"), &[]);
        assert_eq!(code, "200", "{page}");
        if page.contains("verified: entry") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never verified: {page}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // Revoking the admin ends the session on its next request, and voids a
    // link made before.
    let early_link = c.link("alice");
    std::thread::sleep(Duration::from_millis(5));
    c.rt.block_on(c.db.revoke_admin("alice")).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let (code, _, page) = c.curl(&jar, "/console/", &[]);
    assert_eq!(code, "401", "{page}");
    assert!(page.contains("was revoked"), "{page}");
    let fresh = c.data.parent().unwrap().join("fresh-jar");
    let (code, _, page) = c.curl(&fresh, &early_link, &[]);
    assert_eq!(code, "403", "{page}");
    assert!(page.contains("made before its admin was revoked"), "{page}");
}

/// What strangers can put in the trail does not mislead the console: an
/// enrollment refused names no actor the caller chose (it could say
/// `admin:alice`), a megabyte id is refused before anything is written,
/// and a refused attestation sent in a device's name takes away no
/// certificate on the fleet page.
#[test]
fn strangers_cannot_forge_actors_fill_entries_or_fake_a_broken_device() {
    let c = Console::start();
    c.enrolled("laptop-17", &[]);
    let enroll = |id: &str| {
        let body = serde_json::json!({"device_id": id, "token": "nope", "ek_cert": "", "ak_pem": "", "ak_public": ""});
        let file = c.data.parent().unwrap().join("enroll.json");
        std::fs::write(&file, body.to_string()).unwrap();
        let jar = c.data.parent().unwrap().join("anon");
        let data = format!("@{}", file.display());
        let args = [
            "-H",
            "content-type: application/json",
            "--data-binary",
            &data,
        ];
        c.curl(&jar, "/v1/enroll", &args).0
    };
    // Names that read as another actor, or hide in Unicode, or are huge:
    // refused before anything is written.
    let long = "x".repeat(200_000);
    for id in [
        "admin:alice",
        "anonymous\u{202e}",
        "laptop\u{200b}17",
        long.as_str(),
    ] {
        assert_eq!(enroll(id), "400", "{id:.40}");
    }
    // A plain id with a bad token: recorded as the anonymous caller's.
    assert_eq!(enroll("laptop-99"), "403");
    let entries = c.entries();
    let refused: Vec<_> = entries.iter().filter(|e| e.kind == "enrollment").collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].actor, "anonymous");
    assert_eq!(refused[0].subject, "laptop-99");
    assert!(entries.iter().all(|e| e.actor != "admin:alice"));
    // Nor can an admin hand out such a name, or a group that splits in two.
    let jar = c.data.parent().unwrap().join("jar");
    c.curl(&jar, &c.link("alice"), &[]);
    let (_, _, page) = c.curl(&jar, "/console/tokens", &[]);
    let csrf = csrf_of(&page);
    for form in [
        format!("device_id=admin%3Abob&csrf={csrf}"),
        format!("device_id=laptop-20&groups=lab%2Cteachers+x&csrf={csrf}"),
    ] {
        let (code, _, page) = c.curl(&jar, "/console/tokens", &["-d", &form]);
        assert_eq!(code, "400", "{page}");
    }

    // A trusted attestation, then a refused one in the device's name.
    let url = format!("sqlite:{}", c.data.join("satchel.db").display());
    c.rt.block_on(async {
        let s = audit::store::Store::open(&url).await.unwrap();
        for decision in ["trusted", "not-trusted"] {
            let e = audit::entry::NewEntry {
                kind: "attestation".into(),
                actor: "laptop-17".into(),
                subject: "sample".into(),
                decision: decision.into(),
                details: serde_json::json!({"failures": [{"check": "quote", "message": "junk"}]}),
            };
            s.append(vec![e], audit::batch::now_ms()).await.unwrap();
        }
    });
    let (code, _, page) = c.curl(&jar, "/console/", &[]);
    assert_eq!(code, "200", "{page}");
    assert!(
        page.contains("not-trusted") && page.contains("junk"),
        "{page}"
    );
    assert!(page.contains("valid until"), "{page}");
}

#[test]
fn an_admin_certificate_signs_in_and_sign_out_ends_the_session() {
    let c = Console::start();
    let pki = gateway::Pki::init(&c.data, &[]).unwrap();
    let admin = pki
        .issue_admin_cert("bob", Duration::from_secs(3600))
        .unwrap();
    let crt = c.data.parent().unwrap().join("bob.crt");
    let key = c.data.parent().unwrap().join("bob.key");
    std::fs::write(&crt, admin.cert_pem).unwrap();
    std::fs::write(&key, admin.key_pem).unwrap();
    let jar = c.data.parent().unwrap().join("jar");
    let (code, headers, _) = c.curl(
        &jar,
        "/console/login",
        &[
            "--cert",
            crt.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(code, "303", "{headers}");
    // The session works without the certificate from here on.
    let (code, _, page) = c.curl(&jar, "/console/", &[]);
    assert_eq!(code, "200", "{page}");
    assert!(page.contains("admin bob"), "{page}");
    let csrf = csrf_of(&page);
    // Sign-out needs the token too, then the cookie is worthless.
    let (code, _, _) = c.curl(&jar, "/console/logout", &["-d", "csrf=nope"]);
    assert_eq!(code, "403");
    let kept = std::fs::read_to_string(&jar).unwrap();
    let (code, headers, _) = c.curl(&jar, "/console/logout", &["-d", &format!("csrf={csrf}")]);
    assert_eq!(code, "303", "{headers}");
    // Even a cookie copied before sign-out opens nothing now.
    std::fs::write(&jar, kept).unwrap();
    let (code, _, _) = c.curl(&jar, "/console/", &[]);
    assert_eq!(code, "401");
    let entries = c.entries();
    assert!(entries.iter().any(|e| e.kind == "console"
        && e.actor == "admin:bob"
        && e.details["method"] == "certificate"));
    assert!(entries
        .iter()
        .any(|e| e.kind == "console" && e.actor == "admin:bob" && e.subject == "sign-out"));
}

#[test]
fn the_images_page_shows_who_runs_what_and_pins_and_rolls_back() {
    let c = Console::start();
    c.enrolled("laptop-17", &[]);
    let src = c.data.parent().unwrap().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let url = format!("sqlite:{}", c.data.join("satchel.db").display());
    let images = c.rt.block_on(async {
        let (pool, _) = persist::db::connect(&url).await.unwrap();
        gateway::images::Images::open(pool, &c.data).await.unwrap()
    });
    let key = gateway::server::manifest_key(&c.data).unwrap();
    let mut built = Vec::new();
    for text in ["first\n", "second\n"] {
        std::fs::write(src.join("motd"), text).unwrap();
        let b = c.rt.block_on(gateway::images::build(
            &images,
            &c.data,
            &key,
            "lab",
            &[(sync::Layer::BaseOs, src.clone())],
            &mut |_| {},
        ));
        built.push(b.unwrap().remove(0).stored);
    }
    // laptop-17 runs version 1 and was offered 2.
    c.rt.block_on(images.mark("laptop-17", "lab", &built[1..], &built[..1]))
        .unwrap();

    let jar = c.data.parent().unwrap().join("jar");
    c.curl(&jar, &c.link("alice"), &[]);
    let (code, _, page) = c.curl(&jar, "/console/images", &[]);
    assert_eq!(code, "200", "{page}");
    let row = |page: &str, v: u64| -> String {
        page.split("<tr>")
            .find(|r| r.contains(&format!("<td class=\"num\">{v}</td>")))
            .unwrap_or_else(|| panic!("no row for version {v}: {page}"))
            .to_owned()
    };
    assert!(
        row(&page, 1).contains("runs: <code>laptop-17</code>"),
        "{page}"
    );
    assert!(
        row(&page, 2).contains("offered: <code>laptop-17</code>"),
        "{page}"
    );
    let csrf = csrf_of(&page);

    // Pin version 1 for laptop-17: listed, audited with alice's name.
    let (code, _, page) = c.curl(
        &jar,
        "/console/images/pin",
        &[
            "-d",
            &format!("image=lab&layer=base-os&version=1&device_id=laptop-17&csrf={csrf}"),
        ],
    );
    assert_eq!(code, "200", "{page}");
    assert!(page.contains("pinned at version 1 for laptop-17"), "{page}");
    assert!(page.contains("<h3>Pins</h3>"), "{page}");
    // A version that is not there, or a user layer, is refused and said.
    let (code, _, page) = c.curl(
        &jar,
        "/console/images/pin",
        &[
            "-d",
            &format!("image=lab&layer=base-os&version=9&device_id=&csrf={csrf}"),
        ],
    );
    assert_eq!(code, "400");
    assert!(page.contains("no version 9"), "{page}");
    let (code, _, page) = c.curl(
        &jar,
        "/console/images/pin",
        &[
            "-d",
            &format!("image=lab&layer=user-data&version=1&device_id=&csrf={csrf}"),
        ],
    );
    assert_eq!(code, "400");
    assert!(page.contains("user layer"), "{page}");

    // Roll back to 1: version 3, with version 1's files; the boot stages
    // name it.
    let (code, _, page) = c.curl(
        &jar,
        "/console/images/rollback",
        &[
            "-d",
            &format!("image=lab&layer=base-os&version=1&csrf={csrf}"),
        ],
    );
    assert_eq!(code, "200", "{page}");
    assert!(page.contains("published again as version 3"), "{page}");
    let v3 =
        c.rt.block_on(images.version("lab", sync::Layer::BaseOs, "", 3))
            .unwrap()
            .unwrap();
    let files = |l: &gateway::images::StoredLayer| {
        sync::manifest::Signed::verify(&l.signed, &key.verifying_key())
            .unwrap()
            .manifest
            .entries
    };
    assert_eq!(files(&v3), files(&built[0]));
    let stages = std::fs::read_to_string(gateway::images::stages_path(&c.data, "lab")).unwrap();
    assert!(stages.contains(&v3.digest), "{stages}");

    // Unpin; then every change is in the audit trail under alice.
    let (code, _, page) = c.curl(
        &jar,
        "/console/images/unpin",
        &[
            "-d",
            &format!("image=lab&layer=base-os&device_id=laptop-17&csrf={csrf}"),
        ],
    );
    assert_eq!(code, "200", "{page}");
    assert!(!page.contains("<h3>Pins</h3>"), "{page}");
    let decisions: Vec<String> = c
        .entries()
        .into_iter()
        .filter(|e| e.actor == "admin:alice" && e.subject == "lab")
        .map(|e| e.decision)
        .collect();
    assert_eq!(
        decisions,
        ["pinned", "rolled-back", "unpinned"],
        "{decisions:?}"
    );
    // Without the CSRF token nothing changes.
    let (code, _, _) = c.curl(
        &jar,
        "/console/images/rollback",
        &["-d", "image=lab&layer=base-os&version=2&csrf=wrong"],
    );
    assert_eq!(code, "403");
}

#[test]
fn a_revoked_device_cannot_come_back_with_a_spare_token() {
    // Two tokens were made for laptop-17 (one printed twice, one lost);
    // the laptop enrolled with the first and was then stolen and revoked.
    let c = Console::start();
    let groups = vec!["group:class-7a".to_owned()];
    let device = gateway::state::Device {
        device_id: "laptop-17".to_owned(),
        groups: groups.clone(),
        ak_pem: String::new(),
        enrolled_ms: audit::batch::now_ms(),
        revoked_ms: None,
    };
    c.rt.block_on(async {
        let first =
            c.db.make_token("laptop-17", &groups, Duration::from_secs(600))
                .await
                .unwrap();
        let spare =
            c.db.make_token("laptop-17", &groups, Duration::from_secs(600))
                .await
                .unwrap();
        assert!(c.db.enroll(&first, &device).await.unwrap());
        assert!(c.db.revoke("laptop-17").await.unwrap());
        // The spare token would re-enroll it and wipe the revocation.
        assert!(
            !c.db.enroll(&spare, &device).await.unwrap(),
            "re-enrolled after revocation"
        );
        let d = c.db.device("laptop-17").await.unwrap().unwrap();
        assert!(d.revoked_ms.is_some());
        // A token not yet used is voided by revoking its device id too.
        let pending =
            c.db.make_token("laptop-18", &groups, Duration::from_secs(600))
                .await
                .unwrap();
        assert!(c.db.revoke("laptop-18").await.unwrap(), "nothing to revoke");
        let d18 = gateway::state::Device {
            device_id: "laptop-18".to_owned(),
            ..device.clone()
        };
        assert!(!c.db.enroll(&pending, &d18).await.unwrap());
        // A token made after the revocation is the admin's decision: it works.
        let fresh =
            c.db.make_token("laptop-17", &groups, Duration::from_secs(600))
                .await
                .unwrap();
        assert!(c.db.enroll(&fresh, &device).await.unwrap());
    });
}
