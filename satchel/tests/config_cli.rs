//! One configuration for every command: the main file, its `conf.d`
//! snippets (later wins), the `SATCHEL_*` environment, the flag, each layer
//! beating the one before; `satchel config show` says where each value came
//! from; the admin commands act on the database the configuration names.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_port, Served};

fn satchel(config: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_satchel"));
    c.arg("--config").arg(config).env_remove("SATCHEL_CONFIG");
    for (k, _) in std::env::vars() {
        if k.starts_with("SATCHEL_") {
            c.env_remove(k);
        }
    }
    c
}

/// Start `gateway serve` with `cmd` and say which port answers first.
fn serving_on(mut cmd: Command, ports: &[u16]) -> u16 {
    let _served = Served(cmd.stderr(Stdio::null()).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for p in ports {
            if std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok() {
                return *p;
            }
        }
        assert!(Instant::now() < deadline, "the gateway never listened");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn each_layer_beats_the_one_before_and_config_show_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    let conf = etc.join("conf.d");
    std::fs::create_dir_all(&conf).unwrap();
    let main = etc.join("satchel.toml");
    let [main_port, snippet_port, env_port, flag_port] =
        [free_port(), free_port(), free_port(), free_port()];
    let all = [main_port, snippet_port, env_port, flag_port];
    std::fs::write(
        &main,
        format!(
            "[tpm]\ntcti = \"swtpm:host=127.0.0.1,port=2321\"\n\n\
             [gateway]\ndata = \"../gw\"\nlisten = \"127.0.0.1:{main_port}\"\ncert-lifetime = \"30m\"\n"
        ),
    )
    .unwrap();

    // The main file alone.
    let mut c = satchel(&main);
    c.args(["gateway", "serve"]);
    assert_eq!(serving_on(c, &all), main_port);

    // A snippet beats it; show names the snippet for listen, the main file
    // for the rest.
    let snippet = conf.join("50-site.toml");
    std::fs::write(
        &snippet,
        format!("[gateway]\nlisten = \"127.0.0.1:{snippet_port}\"\n"),
    )
    .unwrap();
    let mut c = satchel(&main);
    c.args(["gateway", "serve"]);
    assert_eq!(serving_on(c, &all), snippet_port);
    let o = satchel(&main)
        .args(["config", "show", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["files"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(
        v["values"]["gateway.listen"]["value"],
        format!("127.0.0.1:{snippet_port}")
    );
    assert_eq!(
        v["values"]["gateway.listen"]["from"],
        snippet.display().to_string()
    );
    assert_eq!(
        v["values"]["gateway.cert-lifetime"]["from"],
        main.display().to_string()
    );
    assert_eq!(v["values"]["tpm.tcti"]["from"], main.display().to_string());

    // The environment beats both; show lists it with the flags it feeds.
    let mut c = satchel(&main);
    c.args(["gateway", "serve"])
        .env("SATCHEL_LISTEN", format!("127.0.0.1:{env_port}"));
    assert_eq!(serving_on(c, &all), env_port);
    let o = satchel(&main)
        .args(["config", "show"])
        .env("SATCHEL_LISTEN", format!("127.0.0.1:{env_port}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!("SATCHEL_LISTEN=127.0.0.1:{env_port}"))
            && text.contains("gateway serve --listen"),
        "{text}"
    );
    assert!(
        text.contains(&format!("gateway.listen = \"127.0.0.1:{snippet_port}\"")),
        "{text}"
    );

    // The flag beats everything.
    let mut c = satchel(&main);
    c.args([
        "gateway",
        "serve",
        "--listen",
        &format!("127.0.0.1:{flag_port}"),
    ])
    .env("SATCHEL_LISTEN", format!("127.0.0.1:{env_port}"));
    assert_eq!(serving_on(c, &all), flag_port);

    // The admin commands act on the database the configuration names,
    // without --data: the token issued is in the gateway's own audit trail.
    let o = satchel(&main)
        .args(["gateway", "enroll-token", "--device-id", "laptop-17"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let db = format!("sqlite:{}", dir.path().join("gw/satchel.db").display());
    let o = Command::new(env!("CARGO_BIN_EXE_satchel"))
        .args(["audit", "list", "--db", &db, "--json"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&o.stdout);
    assert!(
        list.contains("enroll-token-issued") && list.contains("laptop-17"),
        "{list}"
    );

    // A broken snippet stops the commands that read it, naming the file.
    std::fs::write(conf.join("90-typo.toml"), "[gateway]\nlisen = 1\n").unwrap();
    let o = satchel(&main).args(["config", "show"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("90-typo.toml") && err.contains("lisen"),
        "{err}"
    );
}
