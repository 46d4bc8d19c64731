//! The web console as an admin uses it, in headless Chromium (Debian's
//! `chromium`, driven over WebDriver through Debian's `chromedriver`),
//! against a running gateway and a real device on a swtpm: sign in with a
//! one-time link, make an enrollment token, enroll and attest the device
//! with it, see its attestation in the fleet, put a policy in force and
//! test a URL against it, revoke the device, and open the revocation's
//! audit entry with its inclusion proof verified. Each page is kept as a
//! screenshot (`SATCHEL_CONSOLE_SCREENSHOTS=DIR`; docs/img holds the ones
//! docs/console.md shows).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use attest::tpm::Tpm;
use fantoccini::{Client, ClientBuilder, Locator};

mod common;
use common::{trusting_home, Running};

/// chromedriver on a free port, stopped on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start(home: &Path) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .env("HOME", home)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let caps = serde_json::json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1280,860",
                format!("--user-data-dir={}", profile.display()),
            ]
        }
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .unwrap()
}

/// The page's text once it holds `needle`, looking again for up to
/// `within`; `reload` reloads between looks (only for a page from a GET: a
/// reload would send a form again).
async fn wait_for(c: &Client, needle: &str, within: Duration, reload: bool) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = match c.find(Locator::Css("main")).await {
            Ok(m) => m.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "{needle:?} never showed: {text}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        if reload {
            c.refresh().await.unwrap();
        }
    }
}

async fn shot(c: &Client, dir: &Path, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    std::fs::write(dir.join(format!("console-{name}.png")), png).unwrap();
}

#[test]
fn an_admin_enrolls_sees_tests_revokes_and_audits_in_the_browser() {
    if Command::new("chromedriver")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the browser test: chromedriver is missing (scripts/setup.sh installs chromium-driver)"
        );
        eprintln!(
            "SKIPPED: chromedriver is not installed (scripts/setup.sh installs chromium-driver)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shots = std::env::var_os("SATCHEL_CONSOLE_SCREENSHOTS")
        .map_or_else(|| dir.path().join("shots"), PathBuf::from);
    std::fs::create_dir_all(&shots).unwrap();

    // A device: a swtpm with an EK certificate, its boot chain measured; the
    // organisation's signed reference for that chain.
    let (swtpm, log, _) = common::measured_swtpm(dir.path());
    let data = dir.path().join("gw");
    let mut config = gateway::ServeConfig::new(data.clone(), "127.0.0.1:0".parse().unwrap());
    common::attesting(&mut config, &swtpm, dir.path());
    config.checkpoint_every = Duration::from_secs(1);
    let gw = Running::with(config);
    let base = format!("https://127.0.0.1:{}", gw.port);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let link = rt.block_on(async {
        let url = format!("sqlite:{}", data.join("satchel.db").display());
        let (pool, _) = persist::db::connect(&url).await.unwrap();
        let db = gateway::state::Db::new(pool).await.unwrap();
        let t = db
            .make_console_link("alice", Duration::from_secs(600))
            .await
            .unwrap();
        format!("{base}/console/login?token={t}")
    });

    let home = dir.path().join("home");
    trusting_home(&home, &data.join("ca.crt"));
    let driver = Driver::start(&home);
    rt.block_on(async {
        let c = browser(&driver, &home.join("profile")).await;

        // Sign in with the link: the fleet, empty.
        c.goto(&link).await.unwrap();
        let text = wait_for(&c, "0 devices enrolled", Duration::from_secs(5), false).await;
        assert!(text.contains("Fleet"), "{text}");

        // A token for laptop-17, from the enrollment page.
        c.find(Locator::LinkText("Enrollment"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let form = c.form(Locator::Css("form.stack")).await.unwrap();
        form.set_by_name("device_id", "laptop-17").await.unwrap();
        form.set_by_name("groups", "group:class-7a").await.unwrap();
        form.submit().await.unwrap();
        wait_for(&c, "Token for laptop-17", Duration::from_secs(5), false).await;
        let token = c
            .find(Locator::Css(".token code"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(token.len(), 48, "{token}");
        c.find(Locator::Css(".qr svg")).await.unwrap();
        shot(&c, &shots, "token").await;

        // The device enrolls with it and attests: trusted, in the fleet.
        let gwc = device::GatewayConfig {
            url: base.clone(),
            ca: data.join("ca.crt"),
            data: dir.path().join("device"),
        };
        {
            let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
            device::enrollment::enroll(&gwc, &mut tpm, "laptop-17", &token)
                .await
                .unwrap();
        }
        device::attestation::attest_once(&gwc, &swtpm.tcti(), std::slice::from_ref(&log))
            .await
            .unwrap();
        c.find(Locator::LinkText("Fleet"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let text = wait_for(&c, "laptop-17", Duration::from_secs(5), true).await;
        assert!(
            text.contains("trusted") && text.contains("valid until"),
            "{text}"
        );
        assert!(text.contains("group:class-7a"), "{text}");
        shot(&c, &shots, "fleet").await;

        // A policy put in force from the editor, then a URL tested: the
        // deciding line is named.
        c.find(Locator::LinkText("Policy"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let editor = c.find(Locator::Id("text")).await.unwrap();
        editor.clear().await.unwrap();
        editor
            .send_keys(
                "p, group:class-7a, url, https://en.wikipedia.org/wiki/*, GET, allow\n\
                 p, group:class-7a, url, https://en.wikipedia.org/wiki/Special:*, *, deny\n\
                 p, group:class-7a, image, classroom, subscribe, allow\n",
            )
            .await
            .unwrap();
        c.form(Locator::Css("form.stack"))
            .await
            .unwrap()
            .submit()
            .await
            .unwrap();
        wait_for(&c, "In force now: 3 rules", Duration::from_secs(5), false).await;
        let test = c.form(Locator::Css("form.filters")).await.unwrap();
        test.set_by_name("device", "laptop-17").await.unwrap();
        test.set_by_name("object", "https://en.wikipedia.org/wiki/Special:Random")
            .await
            .unwrap();
        test.submit().await.unwrap();
        let text = wait_for(&c, "Line 2 decides", Duration::from_secs(5), false).await;
        assert!(text.contains("denied"), "{text}");
        shot(&c, &shots, "policy").await;

        // An image in two versions; the device pulls both (its second
        // offer says it holds version 2). The images page shows it there,
        // and version 1 is pinned for every device from the browser.
        let url = format!("sqlite:{}", data.join("satchel.db").display());
        let (pool, _) = persist::db::connect(&url).await.unwrap();
        let images = gateway::images::Images::open(pool, &data).await.unwrap();
        let key = gateway::server::manifest_key(&data).unwrap();
        let tree = dir.path().join("image/base-os");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        let root = dir.path().join("root");
        let client = gwc.device_client().unwrap();
        for motd in ["version one\n", "version two\n"] {
            std::fs::write(tree.join("etc/motd"), motd).unwrap();
            let layers = [(sync::Layer::BaseOs, tree.clone())];
            gateway::images::build(&images, &data, &key, "classroom", &layers, &mut |_| {})
                .await
                .unwrap();
            let meter = device::Meter::new(None);
            let target = device::sync::Target {
                client: &client,
                cdir: &gwc.data,
                image: "classroom",
                root: &root,
                meter: &meter,
            };
            device::sync::pull(&target, None).await.unwrap();
            device::sync::pull(&target, None).await.unwrap();
        }
        c.find(Locator::LinkText("Images"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let text = wait_for(&c, "runs: laptop-17", Duration::from_secs(5), true).await;
        assert!(text.contains("classroom"), "{text}");
        let pin = c
            .form(Locator::XPath(
                "//tr[td[@class='num' and text()='1']]//form[contains(@action, '/pin')]",
            ))
            .await
            .unwrap();
        pin.submit().await.unwrap();
        let text = wait_for(
            &c,
            "pinned at version 1 for every device",
            Duration::from_secs(5),
            false,
        )
        .await;
        assert!(text.contains("Pins"), "{text}");
        shot(&c, &shots, "images").await;

        // Revoke it from the fleet.
        c.find(Locator::LinkText("Fleet"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        c.find(Locator::Css("button.danger"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let text = wait_for(&c, "laptop-17 is revoked", Duration::from_secs(5), false).await;
        assert!(text.contains("revoked"), "{text}");

        // The trail, filtered to admin actions; the revocation's entry with
        // its inclusion proof verified (checkpoints every second here).
        c.goto(&format!("{base}/console/audit?kind=admin"))
            .await
            .unwrap();
        let text = wait_for(&c, "revoked", Duration::from_secs(5), true).await;
        assert!(
            text.contains("admin:alice") && text.contains("enroll-token"),
            "{text}"
        );
        shot(&c, &shots, "audit").await;
        c.find(Locator::XPath("//tr[td[text()='revoked']]//a"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let text = wait_for(&c, "verified: entry", Duration::from_secs(20), true).await;
        assert!(text.contains("laptop-17"), "{text}");
        shot(&c, &shots, "audit-entry").await;

        // The revoked device no longer attests.
        let again =
            device::attestation::attest_once(&gwc, &swtpm.tcti(), std::slice::from_ref(&log)).await;
        assert!(again.is_err(), "a revoked device attested");
        c.close().await.unwrap();
    });
}
