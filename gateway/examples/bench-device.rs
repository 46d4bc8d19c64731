//! For benchmarks only: register a device in a gateway's database as a
//! finished enrollment does, and write a device certificate and key for it
//! (as a trusted attestation would) into a client directory, so a sync
//! benchmark needs no TPM.
//!
//! `bench-device GWDIR DEVICE-ID CDIR`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, gw, device, cdir] = args.as_slice() else {
        eprintln!("usage: bench-device GWDIR DEVICE-ID CDIR");
        std::process::exit(2);
    };
    let gw = std::path::PathBuf::from(gw);
    let url = gateway::ServeConfig::new(gw.clone(), ([127, 0, 0, 1], 0).into()).db_url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (pool, _) = persist::db::connect(&url)
            .await
            .expect("the gateway database");
        let db = gateway::state::Db::new(pool).await.unwrap();
        let token = db
            .make_token(device, &[], Duration::from_secs(60))
            .await
            .unwrap();
        let d = gateway::state::Device {
            device_id: device.clone(),
            groups: vec![],
            ak_pem: String::new(),
            enrolled_ms: audit::batch::now_ms(),
            revoked_ms: None,
        };
        assert!(db.enroll(&token, &d).await.unwrap());
    });
    let pki = gateway::Pki::init(&gw, &[]).expect("the gateway data directory");
    let kp = rcgen::KeyPair::generate().unwrap();
    let pem = pki
        .issue_device_cert(&gateway::DeviceCertRequest {
            device_id: device,
            public_key: &kp,
            lifetime: Duration::from_secs(3600),
            attestation_id: "bench",
            attested_at_ms: audit::batch::now_ms() + 1,
        })
        .unwrap();
    let cdir = std::path::PathBuf::from(cdir);
    std::fs::create_dir_all(&cdir).unwrap();
    std::fs::write(cdir.join("device.crt"), pem).unwrap();
    std::fs::write(cdir.join("device.key"), kp.serialize_pem()).unwrap();
}
