//! The bounded load test of docs/scale.md, on loopback only: N simulated
//! devices attest, pull a layer and push a change against two gateways
//! (`satchel gateway serve` processes) that share one PostgreSQL and one
//! SeaweedFS, all started here on free ports and stopped at the end.
//!
//! The devices are simulated: each has its own device id, enrollment row,
//! source address (`127.1.X.Y`, so each is its own peer, as devices behind
//! different addresses are), device key and certificate, directory and
//! tree; their quotes all come from one swtpm and one attestation key
//! (each over its own gateway-issued nonce). The quotes are made between
//! asking for the nonces and sending the evidence, so the attestation phase
//! measures the gateways, not the TPM.
//!
//! `load SATCHEL-BINARY [DEVICES] [CONCURRENCY]` (defaults 1000 and 64);
//! prints one JSON object. Run by scripts/bench-scale.sh.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::panic,
    missing_docs
)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use attest::tpm::{AkAlg, Tpm};
use attest::HashAlg;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use rustls::pki_types::pem::PemObject as _;
use serde_json::{json, Value};

struct Gateway {
    child: Child,
    url: String,
    addr: SocketAddr,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) the process has used.
fn cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted from after the command name.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn run(bin: &Path, args: &[String]) {
    let o = Command::new(bin).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn serve(bin: &Path, data: &Path, shared: &[String], dir: &Path, ek_ca: &Path) -> Gateway {
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let child = Command::new(bin)
        .args(["gateway", "serve", "--data"])
        .arg(data)
        .args(["--listen", &addr.to_string(), "--ek-ca"])
        .arg(ek_ca)
        .arg("--reference")
        .arg(dir.join("ref.json"))
        .arg("--reference-key")
        .arg(dir.join("org.pub"))
        .arg("--policy")
        .arg(dir.join("policy.csv"))
        // Every simulated device syncs from 127.0.0.1.
        .args(["--max-connections-per-address", "1024"])
        .args(shared)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "a gateway did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    Gateway {
        child,
        url: format!("https://{addr}"),
        addr,
    }
}

/// The simulated device `i`'s address.
fn source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// POST `body` to `path` at `to` over a new TLS connection from `from`;
/// the status and the JSON answer.
async fn post(
    tls: &Arc<rustls::ClientConfig>,
    from: Ipv4Addr,
    to: SocketAddr,
    path: &str,
    body: &Value,
) -> (u16, Value) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
    let tcp = socket.connect(to).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::post(path)
        .header(hyper::header::HOST, to.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(mut ms: Vec<f64>, wall: f64) -> Value {
    ms.sort_by(|a, b| a.total_cmp(b));
    json!({
        "count": ms.len(),
        "per_second": (ms.len() as f64 / wall * 10.0).round() / 10.0,
        "wall_s": (wall * 100.0).round() / 100.0,
        "p50_ms": (percentile(&ms, 0.5) * 10.0).round() / 10.0,
        "p99_ms": (percentile(&ms, 0.99) * 10.0).round() / 10.0,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bin = PathBuf::from(
        args.get(1)
            .expect("usage: load SATCHEL-BINARY [DEVICES] [CONCURRENCY]"),
    );
    let devices: usize = args.get(2).map_or(1000, |n| n.parse().unwrap());
    let conc: usize = args.get(3).map_or(64, |n| n.parse().unwrap());
    assert!(devices <= 250 * 250, "at most 62,500 devices");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // The organisation: database, object store, a measured swtpm, the
    // reference and its key, the policy, an image.
    let pg = tpm_sim_tests::Postgres::start().unwrap();
    let s3 = tpm_sim_tests::ObjectStore::start("satchel").unwrap();
    let swtpm = tpm_sim_tests::Swtpm::start_with_ek_cert(&["sha256"]).unwrap();
    let chain_path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/boot-chain/chain.toml");
    let chain = firmware_measure::Chain::load(&chain_path).unwrap();
    let log = dir.join("boot.log");
    let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
    firmware_measure::measure(&chain, &mut tpm, &log).unwrap();
    let org = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
    let reference =
        firmware_measure::reference(&chain, None, &[HashAlg::Sha256], "sample", "t".into())
            .unwrap();
    std::fs::write(dir.join("ref.json"), reference.sign(&org).unwrap()).unwrap();
    persist::keys::write_public(&dir.join("org.pub"), &org.verifying_key()).unwrap();
    std::fs::write(
        dir.join("policy.csv"),
        "g, group:class-7a, group:school\np, group:school, image, classroom, subscribe, allow\n",
    )
    .unwrap();
    let creds = dir.join("s3.credentials");
    s3.write_credentials(&creds).unwrap();
    let shared: Vec<String> = vec![
        "--db".into(),
        pg.url(),
        "--chunk-store".into(),
        "s3://satchel/load".into(),
        "--chunk-store-endpoint".into(),
        s3.endpoint(),
        "--chunk-store-credentials".into(),
        creds.display().to_string(),
    ];
    let base = dir.join("src/base-os");
    std::fs::create_dir_all(base.join("usr/bin")).unwrap();
    std::fs::write(base.join("usr/bin/tool"), noise(256 * 1024, 1)).unwrap();
    let user = dir.join("src/user-data");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::write(user.join("notes.txt"), "first notes\n").unwrap();
    let gw_a = dir.join("gw-a");
    let mut build: Vec<String> = vec![
        "image".into(),
        "build".into(),
        "--data".into(),
        gw_a.display().to_string(),
        "--image".into(),
        "classroom".into(),
        "--layer".into(),
        format!("base-os={}", base.display()),
        "--layer".into(),
        format!("user-data={}", user.display()),
    ];
    build.extend(shared.iter().cloned());
    run(&bin, &build);
    let a = serve(&bin, &gw_a, &shared, dir, &swtpm.ek_ca_dir());
    let gw_b = dir.join("gw-b");
    std::fs::create_dir_all(&gw_b).unwrap();
    for e in std::fs::read_dir(&gw_a).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".crt") || name.ends_with(".key") || name.ends_with(".pub") {
            std::fs::copy(e.path(), gw_b.join(&name)).unwrap();
        }
    }
    let b = serve(&bin, &gw_b, &shared, dir, &swtpm.ek_ca_dir());
    let gateways = [&a, &b];
    let ca_pem = std::fs::read_to_string(gw_a.join("ca.crt")).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // One attestation key; every simulated device enrolled with it.
    let ak = tpm.create_ak(AkAlg::EccP256).unwrap();
    let log_bytes = std::fs::read(&log).unwrap();
    let ids: Vec<String> = (0..devices).map(|i| format!("load-{i:05}")).collect();
    rt.block_on(async {
        let (pool, _) = persist::db::connect(&pg.url()).await.unwrap();
        let db = gateway::state::Db::new(pool).await.unwrap();
        for id in &ids {
            let groups = vec!["group:class-7a".to_owned()];
            let t = db
                .make_token(id, &groups, Duration::from_secs(600))
                .await
                .unwrap();
            let d = gateway::state::Device {
                device_id: id.clone(),
                groups,
                ak_pem: ak.public_pem.clone(),
                enrolled_ms: audit::batch::now_ms(),
                revoked_ms: None,
            };
            assert!(db.enroll(&t, &d).await.unwrap());
        }
    });
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );

    // In rounds of ROUND devices (their nonces live 120 s): 1. nonces, from
    // each device's own address, at alternate gateways; 2. the quotes and
    // certificate requests (the TPM's time, not measured); 3. the
    // attestations, each to the gateway that did not issue its nonce
    // (measured: wall time, latencies, the gateways' CPU).
    const ROUND: usize = 250;
    let (mut attest_ms, mut certs, mut keys) = (Vec::new(), Vec::new(), Vec::new());
    let (mut attest_wall, mut quote_s) = (0.0, 0.0);
    let mut attest_cpu_each = [0.0f64; 2];
    for (r, round) in ids.chunks(ROUND).enumerate() {
        let base_i = r * ROUND;
        let nonces: Vec<Value> = rt.block_on(async {
            let sem = Arc::new(tokio::sync::Semaphore::new(conc));
            let mut tasks = Vec::new();
            for (j, id) in round.iter().enumerate() {
                let i = base_i + j;
                let (tls, sem) = (Arc::clone(&tls), Arc::clone(&sem));
                let to = gateways[i % 2].addr;
                let body = json!({"device_id": id});
                tasks.push(tokio::spawn(async move {
                    let _permit = sem.acquire().await.unwrap();
                    post(&tls, source(i), to, "/v1/attest/nonce", &body).await
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                let (s, v) = t.await.unwrap();
                assert_eq!(s, 200, "nonce: {v}");
                out.push(v);
            }
            out
        });
        let quoting = Instant::now();
        let mut bodies = Vec::new();
        for (id, n) in round.iter().zip(&nonces) {
            let pcrs: BTreeSet<u32> = n["pcrs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| u32::try_from(p.as_u64().unwrap()).unwrap())
                .collect();
            let sel: BTreeMap<HashAlg, BTreeSet<u32>> = [(HashAlg::Sha256, pcrs)].into();
            let nonce = hex::decode(n["nonce"].as_str().unwrap()).unwrap();
            let e = tpm
                .evidence(&ak, &nonce, &sel, vec![log_bytes.clone()])
                .unwrap();
            let evidence: Value = serde_json::from_str(&e.to_json()).unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, id.clone());
            let csr = params.serialize_request(&key).unwrap().pem().unwrap();
            bodies.push(json!({"device_id": id, "evidence": evidence, "csr": csr}));
            keys.push(key.serialize_pem());
        }
        quote_s += quoting.elapsed().as_secs_f64();
        let cpu0 = [cpu(a.child.id()), cpu(b.child.id())];
        let started = Instant::now();
        let done: Vec<(f64, String)> = rt.block_on(async {
            let sem = Arc::new(tokio::sync::Semaphore::new(conc));
            let mut tasks = Vec::new();
            for (j, body) in bodies.into_iter().enumerate() {
                let i = base_i + j;
                let (tls, sem) = (Arc::clone(&tls), Arc::clone(&sem));
                let to = gateways[(i + 1) % 2].addr;
                tasks.push(tokio::spawn(async move {
                    let _permit = sem.acquire().await.unwrap();
                    let t = Instant::now();
                    let (s, v) = post(&tls, source(i), to, "/v1/attest", &body).await;
                    assert_eq!(s, 200, "attest: {v}");
                    (
                        t.elapsed().as_secs_f64() * 1000.0,
                        v["certificate"].as_str().unwrap().to_owned(),
                    )
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        });
        attest_wall += started.elapsed().as_secs_f64();
        let cpu1 = [cpu(a.child.id()), cpu(b.child.id())];
        for g in 0..2 {
            attest_cpu_each[g] += cpu1[g] - cpu0[g];
        }
        for (ms, cert) in done {
            attest_ms.push(ms);
            certs.push(cert);
        }
    }
    let cpu1 = [cpu(a.child.id()), cpu(b.child.id())];

    // 4. Each device pulls the image and pushes a change to its user layer.
    let started = Instant::now();
    // The device's sync futures stay on one task: CONCURRENCY at a time.
    let sync_ms: Vec<f64> = rt.block_on(async {
        use futures::StreamExt as _;
        futures::stream::iter(keys.iter().zip(&certs).enumerate())
            .map(|(i, (key, cert))| {
                let ca = ca_pem.clone();
                let url = format!("{},{}", gateways[i % 2].url, gateways[(i + 1) % 2].url);
                let home = dir.join(format!("dev/{i}"));
                async move {
                    let t = Instant::now();
                    let client = device::GatewayClient::new(&url, &ca, Some((cert, key))).unwrap();
                    let (cdir, root) = (home.join("data"), home.join("root"));
                    let meter = device::client::Meter::new(None);
                    let target = device::sync::Target {
                        client: &client,
                        cdir: &cdir,
                        image: "classroom",
                        root: &root,
                        meter: &meter,
                    };
                    device::sync::pull(&target, None).await.unwrap();
                    std::fs::write(root.join("user-data/notes.txt"), format!("device {i}\n"))
                        .unwrap();
                    device::sync::push(&target, None).await.unwrap();
                    t.elapsed().as_secs_f64() * 1000.0
                }
            })
            .buffer_unordered(conc)
            .collect()
            .await
    });
    let sync_wall = started.elapsed().as_secs_f64();
    let cpu2 = [cpu(a.child.id()), cpu(b.child.id())];

    let attest_cpu = attest_cpu_each[0] + attest_cpu_each[1];
    let sync_cpu = (cpu2[0] - cpu1[0]) + (cpu2[1] - cpu1[1]);
    let report = json!({
        "devices": devices,
        "concurrency": conc,
        "gateways": 2,
        "quotes_made_s": (quote_s * 100.0).round() / 100.0,
        "attest": summary(attest_ms, attest_wall),
        "attest_gateway_cpu_ms_each": (attest_cpu * 1000.0 / devices as f64 * 100.0).round() / 100.0,
        "attest_gateway_cpu_s": attest_cpu_each,
        "pull_and_push": summary(sync_ms, sync_wall),
        "pull_and_push_gateway_cpu_ms_each": (sync_cpu * 1000.0 / devices as f64 * 100.0).round() / 100.0,
    });
    println!("{report}");
    drop((a, b));
}
