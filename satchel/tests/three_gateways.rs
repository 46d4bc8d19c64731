//! Three gateways of one organisation, each in a network namespace of its
//! own with its own address (a bridge and veth pairs the test makes), on
//! one PostgreSQL and one S3-compatible object store (SeaweedFS) that the
//! harness starts on the bridge's address: a device (a swtpm) enrolls
//! through A, attests through B and pulls from C; C is killed mid-pull and
//! the pull completes through A, every chunk checked; the gateway signing
//! the audit log's checkpoints is killed and another signs; a device that
//! knows the gateways by one name (three addresses, two of them stopped)
//! pulls through the survivor; and `satchel audit verify` passes on the
//! shared log. Runs as root (CI).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{noise, same_tree, Served};
use tpm_sim_tests::{ObjectStore, Postgres, Swtpm};

fn run(cmd: &mut Command) {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// A bridge on this host and one namespace per gateway, joined to it by a
/// veth pair: the bridge is `10.213.N.1`, gateway `i` is `10.213.N.(2+i)`.
/// Removed on drop.
struct Net {
    n: u8,
    names: Vec<String>,
}

impl Net {
    fn new(gateways: usize) -> Net {
        // A subnet and names of this test's own (tests run side by side).
        let n = (std::process::id() % 200) as u8 + 20;
        let bridge = format!("sbr{n}");
        let _ = Command::new("ip").args(["link", "del", &bridge]).output();
        ip(&["link", "add", &bridge, "type", "bridge"]);
        let net = Net {
            n,
            names: (0..gateways).map(|i| format!("sat{n}g{i}")).collect(),
        };
        ip(&["addr", "add", &format!("10.213.{n}.1/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        for (i, ns) in net.names.iter().enumerate() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            let (host, inner) = (format!("v{n}g{i}"), format!("e{n}g{i}"));
            ip(&["netns", "add", ns]);
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner]);
            ip(&["link", "set", &inner, "netns", ns]);
            ip(&["link", "set", &host, "master", &bridge, "up"]);
            let addr = format!("{}/24", net.gateway(i));
            ip(&["-n", ns, "addr", "add", &addr, "dev", &inner]);
            ip(&["-n", ns, "link", "set", &inner, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        net
    }

    fn host(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.n, 1)
    }

    fn gateway(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.n, 2 + i as u8)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{ns}"));
        }
        let _ = Command::new("ip")
            .args(["link", "del", &format!("sbr{}", self.n)])
            .output();
    }
}

struct Org {
    dir: tempfile::TempDir,
    net: Net,
    pg: Postgres,
    s3: ObjectStore,
    tpm: Swtpm,
}

const PORT: u16 = 8443;

impl Org {
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn s(&self, rel: &str) -> String {
        self.p(rel).to_string_lossy().into_owned()
    }

    fn url(&self, i: usize) -> String {
        format!("https://{}:{PORT}", self.net.gateway(i))
    }

    fn db(&self) -> String {
        self.pg.url_at(self.net.host())
    }

    /// `--db` and the object store.
    fn shared(&self) -> Vec<String> {
        [
            "--db",
            &self.db(),
            "--chunk-store",
            &format!("s3://{}/org", self.s3.bucket()),
            "--chunk-store-endpoint",
            &self.s3.endpoint(),
            "--chunk-store-credentials",
            &self.s("s3.credentials"),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    fn satchel(&self, args: &[String]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_satchel"))
            .args(args)
            .env("SATCHEL_TPM", self.tpm.tcti())
            .env("TSS2_LOG", "all+none")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[String]) -> String {
        let o = self.satchel(args);
        assert!(
            o.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Gateway `i` serving in its namespace, up.
    fn serve(&self, i: usize) -> Served {
        let data = self.s(&format!("gw{i}"));
        let mut args: Vec<String> = [
            "netns",
            "exec",
            &self.net.names[i],
            env!("CARGO_BIN_EXE_satchel"),
            "gateway",
            "serve",
            "--data",
            &data,
            "--listen",
            &format!("{}:{PORT}", self.net.gateway(i)),
            "--server-name",
            &format!("{},gw.test", self.net.gateway(i)),
            "--ek-ca",
            self.tpm.ek_ca_dir().to_str().unwrap(),
            "--reference",
            &self.s("ref.json"),
            "--reference-key",
            &self.s("org.key.pub"),
            "--policy",
            &self.s("policy.csv"),
            "--checkpoint-every",
            "500ms",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(self.shared());
        let child = Command::new("ip")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.p(&format!("gw{i}.log"))).unwrap())
            .spawn()
            .unwrap();
        let served = Served(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let o = Command::new("curl")
                .args(["-sS", "--max-time", "3", "--cacert"])
                .arg(self.p("gw0/ca.crt"))
                .arg(format!("{}/v1/health", self.url(i)))
                .output()
                .unwrap();
            if o.status.success() {
                return served;
            }
            assert!(
                Instant::now() < deadline,
                "gateway {i} did not come up: {}",
                std::fs::read_to_string(self.p(&format!("gw{i}.log"))).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn client(&self, gateways: &str, verb: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec!["client".to_owned()];
        args.extend(verb.iter().map(|s| (*s).to_owned()));
        args.extend(
            [
                "--gateway",
                gateways,
                "--ca",
                &self.s("gw0/ca.crt"),
                "--data",
                &self.s("device"),
            ]
            .iter()
            .map(|s| (*s).to_owned()),
        );
        args
    }
}

/// The size the signer whose state is in `data` last signed (0: none).
fn signed_size(data: &Path) -> u64 {
    std::fs::read(data.join("audit.tree"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["size"].as_u64())
        .unwrap_or(0)
}

/// The audit log's entries.
fn log_size(url: &str) -> u64 {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let store = audit::store::Store::open(url).await.unwrap();
            store.size().await.unwrap()
        })
}

#[test]
fn three_gateways_in_their_own_namespaces_serve_one_device_through_the_loss_of_two() {
    if !common::root_with("") || Command::new("ip").arg("-V").output().is_err() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Three gateways, and a namespace for the device's last pull (its own
    // /etc/hosts: `ip netns exec` mounts /etc/netns/NAME/hosts over it).
    let net = Net::new(4);
    let pg = Postgres::start_on(&[net.host()]).unwrap();
    let s3 = ObjectStore::start_on("satchel", net.host()).unwrap();
    let tpm = Swtpm::start_with_ek_cert(&["sha256"]).unwrap();
    let org = Org {
        dir,
        net,
        pg,
        s3,
        tpm,
    };
    let creds = org.p("s3.credentials");
    org.s3.write_credentials(&creds).unwrap();

    // The organisation's boot reference, policy and image.
    let chain = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/boot-chain/chain.toml");
    let chain = chain.to_string_lossy().into_owned();
    org.ok(&[
        "measure".into(),
        "--chain".into(),
        chain.clone(),
        "--log".into(),
        org.s("boot.log"),
    ]);
    org.ok(&["keygen".into(), "--out".into(), org.s("org.key")]);
    org.ok(&[
        "predict".into(),
        "--chain".into(),
        chain,
        "--banks".into(),
        "sha256".into(),
        "--sign-key".into(),
        org.s("org.key"),
        "--out".into(),
        org.s("ref.json"),
    ]);
    std::fs::write(
        org.p("policy.csv"),
        "g, group:class-7a, group:school\np, group:school, image, classroom, subscribe, allow\n",
    )
    .unwrap();
    let base = org.p("src/base-os");
    std::fs::create_dir_all(base.join("usr/bin")).unwrap();
    std::fs::write(base.join("usr/bin/tool"), noise(1_500_000, 1)).unwrap();
    std::fs::write(base.join("usr/bin/other"), noise(400_000, 2)).unwrap();
    let mut build: Vec<String> = [
        "image",
        "build",
        "--data",
        &org.s("gw0"),
        "--image",
        "classroom",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    build.extend(org.shared());
    build.extend(["--layer".to_owned(), format!("base-os={}", base.display())]);
    org.ok(&build);

    // A first, then B and C with the organisation's keys from A's directory.
    let mut served = vec![Some(org.serve(0))];
    for i in 1..3 {
        let to = org.p(&format!("gw{i}"));
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(org.p("gw0")).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let key = name.ends_with(".key") || name.ends_with(".crt") || name.ends_with(".pub");
            if key && !name.starts_with("server.") {
                std::fs::copy(e.path(), to.join(&name)).unwrap();
            }
        }
        served.push(Some(org.serve(i)));
    }

    // Enroll through A, attest through B.
    let mut token: Vec<String> = ["gateway", "enroll-token", "--data", &org.s("gw0")]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    token.extend(org.shared());
    token.extend(
        ["--device-id", "laptop-1", "--groups", "group:class-7a"]
            .iter()
            .map(|s| (*s).to_owned()),
    );
    let token = org.ok(&token).trim().to_owned();
    org.ok(&org.client(
        &org.url(0),
        &["enroll", "--device-id", "laptop-1", "--token", &token],
    ));
    org.ok(&org.client(&org.url(1), &["attest", "--log", &org.s("boot.log")]));

    // Pull from C (A next); C is killed two and a half seconds in.
    let gateways = format!("{},{}", org.url(2), org.url(0));
    let mut pull = org.client(
        &gateways,
        &[
            "sync",
            "pull",
            "--image",
            "classroom",
            "--max-rate",
            "300K",
            "--stats-json",
        ],
    );
    pull.extend(["--into".to_owned(), org.s("root")]);
    let child = Command::new(env!("CARGO_BIN_EXE_satchel"))
        .args(&pull)
        .env("TSS2_LOG", "all+none")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Served(child);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the pull ended before its gateway stopped"
    );
    served[2] = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the pull did not finish");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    same_tree(&base, &org.p("root/base-os"));

    // The signer: whichever of the three holds the lease. Killed (C may be
    // it already), another signs what follows.
    let deadline = Instant::now() + Duration::from_secs(30);
    let signer = loop {
        let size = log_size(&org.db());
        let s = (0..3).find(|i| signed_size(&org.p(&format!("gw{i}"))) >= size && size > 0);
        if let Some(s) = s {
            break s;
        }
        assert!(Instant::now() < deadline, "no gateway signed the log");
        std::thread::sleep(Duration::from_millis(200));
    };
    served[signer] = None;
    let survivors: Vec<usize> = (0..2).filter(|i| *i != signer).collect();
    let before: Vec<u64> = survivors
        .iter()
        .map(|i| signed_size(&org.p(&format!("gw{i}"))))
        .collect();
    // More entries: a pull through a surviving gateway.
    let mut again = org.client(
        &survivors
            .iter()
            .map(|i| org.url(*i))
            .collect::<Vec<_>>()
            .join(","),
        &["sync", "pull", "--image", "classroom"],
    );
    again.extend(["--into".to_owned(), org.s("root")]);
    org.ok(&again);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let size = log_size(&org.db());
        let took_over = survivors.iter().zip(&before).any(|(i, b)| {
            let now = signed_size(&org.p(&format!("gw{i}")));
            now > *b && now >= size
        });
        if took_over {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no surviving gateway signed the log after the signer stopped"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Failover by name: in the device's namespace, gw.test names all
    // three gateways, the two stopped ones first. A pull into a new tree
    // through https://gw.test:8443 completes through the survivor.
    let hosts = format!("/etc/netns/{}", org.net.names[3]);
    std::fs::create_dir_all(&hosts).unwrap();
    let mut order: Vec<usize> = (0..3).filter(|i| served[*i].is_none()).collect();
    order.extend((0..3).filter(|i| served[*i].is_some()));
    assert_eq!(order.len(), 3);
    let lines: String = order
        .iter()
        .map(|i| format!("{} gw.test\n", org.net.gateway(*i)))
        .collect();
    std::fs::write(
        format!("{hosts}/hosts"),
        format!("127.0.0.1 localhost\n{lines}"),
    )
    .unwrap();
    let fresh = org.p("device-dns");
    std::fs::create_dir_all(&fresh).unwrap();
    for e in std::fs::read_dir(org.p("device")).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), fresh.join(e.file_name())).unwrap();
        }
    }
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            &org.net.names[3],
            env!("CARGO_BIN_EXE_satchel"),
        ])
        .args([
            "client",
            "sync",
            "pull",
            "--gateway",
            &format!("https://gw.test:{PORT}"),
        ])
        .arg("--ca")
        .arg(org.p("gw0/ca.crt"))
        .arg("--data")
        .arg(&fresh)
        .args(["--image", "classroom", "--into"])
        .arg(org.p("root-dns"))
        .env("TSS2_LOG", "all+none")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    same_tree(&base, &org.p("root-dns/base-os"));

    // The shared log verifies whole.
    let out = org.ok(&[
        "audit".into(),
        "verify".into(),
        "--db".into(),
        org.db(),
        "--pubkey".into(),
        org.s("gw0/audit.key.pub"),
        "--origin".into(),
        "satchel.gateway.audit".into(),
    ]);
    assert!(out.contains("intact"), "{out}");
    drop(served);
}
