//! One configuration for every command (docs/config.md): the main file,
//! then the snippets in the `conf.d` directory beside it (in name order),
//! merged with figment so that each value knows the file it came from;
//! then a `SATCHEL_*` environment variable; then the flag. The last one set
//! wins.
//!
//! The main file is `--config FILE`, else `$SATCHEL_CONFIG`, else
//! `/etc/satchel/satchel.toml`; the snippets are `DIR/conf.d/*.toml` for
//! the main file's directory `DIR`. Neither need exist: no file means
//! defaults. Tables: `[tpm]`, `[agent]` (docs/agent.md), `[gateway]`
//! (docs/gateway.md). Unknown tables and keys are errors; relative paths
//! are relative to the file that holds them. `examples/satchel.toml` is
//! the sample.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use figment::providers::{Format as _, Toml};
use figment::value::magic::RelativePathBuf;
use figment::Figment;
use serde::Deserialize;

/// Where the configuration is looked for when no file is named.
pub(crate) const DEFAULT_PATH: &str = "/etc/satchel/satchel.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    tpm: RawTpm,
    #[serde(default)]
    agent: Option<RawAgent>,
    #[serde(default)]
    gateway: Option<RawGateway>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTpm {
    tcti: Option<String>,
}

/// A path as written, made absolute against the file it came from.
fn rel(p: Option<RelativePathBuf>) -> Option<PathBuf> {
    p.map(|p| p.relative())
}

fn rels(p: Vec<RelativePathBuf>) -> Vec<PathBuf> {
    p.into_iter().map(|p| p.relative()).collect()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAgent {
    bundle: Option<RelativePathBuf>,
    bundle_key: Option<RelativePathBuf>,
    subject: Option<String>,
    #[serde(default)]
    mount: Vec<RelativePathBuf>,
    root: Option<RelativePathBuf>,
    #[serde(default)]
    interpreter: Vec<RelativePathBuf>,
    #[serde(default)]
    exec_mount: Vec<PathBuf>,
    #[serde(default)]
    allow_open_system: bool,
    mode: Option<String>,
    gateway: Option<String>,
    ca: Option<RelativePathBuf>,
    data: Option<RelativePathBuf>,
    #[serde(default)]
    log: Vec<RelativePathBuf>,
    state_dir: Option<RelativePathBuf>,
    reattest_margin: Option<String>,
    image: Option<String>,
    into: Option<RelativePathBuf>,
    sync_interval: Option<String>,
    sync_max_rate: Option<String>,
    deliver_interval: Option<String>,
    refresh_interval: Option<String>,
}

/// The `[agent]` table: the options of `satchel agent`, each below its
/// flag, paths made absolute. See docs/agent.md.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AgentFile {
    pub(crate) bundle: Option<PathBuf>,
    pub(crate) bundle_key: Option<PathBuf>,
    pub(crate) subject: Option<String>,
    pub(crate) mount: Vec<PathBuf>,
    pub(crate) root: Option<PathBuf>,
    pub(crate) interpreter: Vec<PathBuf>,
    pub(crate) exec_mount: Vec<PathBuf>,
    pub(crate) allow_open_system: bool,
    pub(crate) mode: Option<String>,
    pub(crate) gateway: Option<String>,
    pub(crate) ca: Option<PathBuf>,
    pub(crate) data: Option<PathBuf>,
    pub(crate) log: Vec<PathBuf>,
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) reattest_margin: Option<String>,
    pub(crate) image: Option<String>,
    pub(crate) into: Option<PathBuf>,
    pub(crate) sync_interval: Option<String>,
    pub(crate) sync_max_rate: Option<String>,
    pub(crate) deliver_interval: Option<String>,
    pub(crate) refresh_interval: Option<String>,
}

impl From<RawAgent> for AgentFile {
    fn from(r: RawAgent) -> AgentFile {
        AgentFile {
            bundle: rel(r.bundle),
            bundle_key: rel(r.bundle_key),
            subject: r.subject,
            mount: rels(r.mount),
            root: rel(r.root),
            interpreter: rels(r.interpreter),
            exec_mount: r.exec_mount,
            allow_open_system: r.allow_open_system,
            mode: r.mode,
            gateway: r.gateway,
            ca: rel(r.ca),
            data: rel(r.data),
            log: rels(r.log),
            state_dir: rel(r.state_dir),
            reattest_margin: r.reattest_margin,
            image: r.image,
            into: rel(r.into),
            sync_interval: r.sync_interval,
            sync_max_rate: r.sync_max_rate,
            deliver_interval: r.deliver_interval,
            refresh_interval: r.refresh_interval,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawGateway {
    data: Option<RelativePathBuf>,
    listen: Option<SocketAddr>,
    proxy_listen: Option<SocketAddr>,
    db: Option<String>,
    policy: Option<RelativePathBuf>,
    ek_ca: Option<RelativePathBuf>,
    reference: Option<RelativePathBuf>,
    reference_key: Option<RelativePathBuf>,
    cert_lifetime: Option<String>,
    drain: Option<String>,
    #[serde(default)]
    server_names: Vec<String>,
    upstream_ca: Option<RelativePathBuf>,
    access_log: Option<RelativePathBuf>,
    max_connections_per_address: Option<u32>,
    keep_versions: Option<u64>,
    checkpoint_every: Option<String>,
    chunk_store: Option<String>,
    chunk_store_endpoint: Option<String>,
    chunk_store_region: Option<String>,
    chunk_store_credentials: Option<RelativePathBuf>,
}

/// The `[gateway]` table (or a gateway-only file): the options of
/// `satchel gateway serve`, paths made absolute. The admin commands read
/// its `data` and `db`. See docs/gateway.md.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct GatewayFile {
    pub(crate) data: Option<PathBuf>,
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) proxy_listen: Option<SocketAddr>,
    pub(crate) db: Option<String>,
    pub(crate) policy: Option<PathBuf>,
    pub(crate) ek_ca: Option<PathBuf>,
    pub(crate) reference: Option<PathBuf>,
    pub(crate) reference_key: Option<PathBuf>,
    pub(crate) cert_lifetime: Option<String>,
    pub(crate) drain: Option<String>,
    pub(crate) server_names: Vec<String>,
    pub(crate) upstream_ca: Option<PathBuf>,
    pub(crate) access_log: Option<PathBuf>,
    pub(crate) max_connections_per_address: Option<u32>,
    /// `satchel gateway gc`'s `--keep-versions` when not given.
    pub(crate) keep_versions: Option<u64>,
    /// How often the audit checkpoint is signed.
    pub(crate) checkpoint_every: Option<String>,
    /// The shared object store for chunks (`s3://BUCKET[/PREFIX]`).
    pub(crate) chunk_store: Option<String>,
    /// Its address (for a SeaweedFS or Garage).
    pub(crate) chunk_store_endpoint: Option<String>,
    /// Its region.
    pub(crate) chunk_store_region: Option<String>,
    /// The file holding its access key pair.
    pub(crate) chunk_store_credentials: Option<PathBuf>,
}

impl From<RawGateway> for GatewayFile {
    fn from(r: RawGateway) -> GatewayFile {
        GatewayFile {
            data: rel(r.data),
            listen: r.listen,
            proxy_listen: r.proxy_listen,
            db: r.db,
            policy: rel(r.policy),
            ek_ca: rel(r.ek_ca),
            reference: rel(r.reference),
            reference_key: rel(r.reference_key),
            cert_lifetime: r.cert_lifetime,
            drain: r.drain,
            server_names: r.server_names,
            upstream_ca: rel(r.upstream_ca),
            // `-` is standard error, not a file beside the configuration.
            access_log: r.access_log.map(|p| {
                if p.original() == Path::new("-") {
                    PathBuf::from("-")
                } else {
                    p.relative()
                }
            }),
            max_connections_per_address: r.max_connections_per_address,
            keep_versions: r.keep_versions,
            checkpoint_every: r.checkpoint_every,
            chunk_store: r.chunk_store,
            chunk_store_endpoint: r.chunk_store_endpoint,
            chunk_store_region: r.chunk_store_region,
            chunk_store_credentials: rel(r.chunk_store_credentials),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Config {
    /// `[tpm] tcti`: the TPM's TCTI, below `--tpm` and `$SATCHEL_TPM`.
    pub(crate) tcti: Option<String>,
    /// `[agent]`: the agent's options.
    pub(crate) agent: AgentFile,
    /// `[gateway]`: the gateway's options.
    pub(crate) gateway: GatewayFile,
}

/// The files of one configuration, merged.
pub(crate) struct Layers {
    /// The files read, in order (later ones win).
    pub(crate) files: Vec<PathBuf>,
    figment: Figment,
}

/// The main file: the one named, else `$SATCHEL_CONFIG`, else the default
/// path; and whether it was named (a named file must exist).
fn main_file(flag: Option<&Path>) -> (PathBuf, bool) {
    match flag
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("SATCHEL_CONFIG").map(PathBuf::from))
    {
        Some(p) => (p, true),
        None => (PathBuf::from(DEFAULT_PATH), false),
    }
}

/// The snippets beside `main`: `conf.d/*.toml`, in name order.
fn snippets(main: &Path) -> Vec<PathBuf> {
    let dir = main.parent().unwrap_or(Path::new(".")).join("conf.d");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

impl Layers {
    /// The main file (see [`main_file`]) and its snippets.
    pub(crate) fn find(flag: Option<&Path>) -> anyhow::Result<Layers> {
        let (main, named) = main_file(flag);
        let mut files = Vec::new();
        if main.exists() {
            files.push(main.clone());
        } else if named {
            anyhow::bail!("reading config {}: no such file", main.display());
        }
        files.extend(snippets(&main));
        Ok(Layers::of(files))
    }

    /// Exactly these files, in this order.
    pub(crate) fn of(files: Vec<PathBuf>) -> Layers {
        let figment = files
            .iter()
            .fold(Figment::new(), |f, p| f.merge(Toml::file_exact(p)));
        Layers { files, figment }
    }

    fn raw(&self) -> anyhow::Result<RawConfig> {
        self.figment.extract::<RawConfig>().with_context(|| {
            let names: Vec<String> = self.files.iter().map(|p| p.display().to_string()).collect();
            format!("config {}", names.join(" + "))
        })
    }

    /// Parse and validate.
    pub(crate) fn config(&self) -> anyhow::Result<Config> {
        Config::try_from(self.raw()?)
    }

    /// The gateway's table, from a file that holds a `[gateway]` table or
    /// only the gateway's keys (the gateway-only form, `gateway.toml`).
    pub(crate) fn gateway(&self) -> anyhow::Result<GatewayFile> {
        if self.figment.contains("gateway") {
            return Ok(self.config()?.gateway);
        }
        let raw: RawGateway = self.figment.extract().with_context(|| {
            let names: Vec<String> = self.files.iter().map(|p| p.display().to_string()).collect();
            format!("gateway config {}", names.join(" + "))
        })?;
        Ok(raw.into())
    }

    /// Every value set, by its dotted key: the value (as TOML would write
    /// it) and the file it came from.
    pub(crate) fn origins(&self) -> BTreeMap<String, (String, String)> {
        let mut out = BTreeMap::new();
        let Ok(root) = self.figment.find_value("") else {
            return out;
        };
        let mut stack = vec![(String::new(), root)];
        while let Some((key, value)) = stack.pop() {
            if let figment::value::Value::Dict(_, d) = &value {
                for (k, v) in d {
                    let full = if key.is_empty() {
                        k.clone()
                    } else {
                        format!("{key}.{k}")
                    };
                    stack.push((full, v.clone()));
                }
                continue;
            }
            let from = self
                .figment
                .get_metadata(value.tag())
                .and_then(|m| m.source.as_ref())
                .map_or_else(|| "?".to_owned(), ToString::to_string);
            let shown = serde_json::to_string(&value).unwrap_or_default();
            out.insert(key, (shown, from));
        }
        out
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = anyhow::Error;

    fn try_from(raw: RawConfig) -> anyhow::Result<Config> {
        let tcti = raw.tpm.tcti;
        if let Some(t) = &tcti {
            anyhow::ensure!(
                t.contains(':') || matches!(t.as_str(), "device" | "swtpm" | "mssim" | "tabrmd"),
                "[tpm] tcti = {t:?} is not a TCTI (e.g. \"device:/dev/tpmrm0\" or \"swtpm:host=127.0.0.1,port=2321\")"
            );
        }
        Ok(Config {
            tcti,
            agent: raw.agent.map(AgentFile::from).unwrap_or_default(),
            gateway: raw.gateway.map(GatewayFile::from).unwrap_or_default(),
        })
    }
}

impl Config {
    /// Parse and validate configuration text (relative paths stay as
    /// written).
    #[cfg(test)]
    pub(crate) fn from_toml(text: &str) -> anyhow::Result<Config> {
        let raw: RawConfig = Figment::from(Toml::string(text)).extract()?;
        Config::try_from(raw)
    }

    /// Load the configuration (see the module documentation).
    pub(crate) fn load(flag: Option<&Path>) -> anyhow::Result<Config> {
        Layers::find(flag)?.config()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_config_is_valid() {
        let sample = include_str!("../../examples/satchel.toml");
        let c = Config::from_toml(sample).unwrap();
        assert_eq!(c.tcti.as_deref(), Some("device:/dev/tpmrm0"));
    }

    #[test]
    fn closed_mode_keys_parse() {
        let c = Config::from_toml(
            "[agent]\nroot = \"/\"\ninterpreter = [\"/usr/bin/python3\"]\nallow-open-system = true",
        )
        .unwrap();
        let a = c.agent;
        assert_eq!(a.root.as_deref(), Some(Path::new("/")));
        assert_eq!(a.interpreter, vec![PathBuf::from("/usr/bin/python3")]);
        assert!(a.allow_open_system);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(Config::from_toml("[tpm]\ntcti = \"device:/dev/tpm0\"\ncolour = 1").is_err());
        assert!(Config::from_toml("[tmp]\ntcti = \"device:/dev/tpm0\"").is_err());
        assert!(Config::from_toml("[tpm]\ntcti = \"/dev/tpm0\"").is_err());
        assert!(Config::from_toml("[gateway]\nlisten = \"nowhere\"").is_err());
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn snippets_override_the_main_file_in_name_order_and_paths_follow_their_file() {
        let d = tempfile::tempdir().unwrap();
        let main = d.path().join("satchel.toml");
        std::fs::write(
            &main,
            "[tpm]\ntcti = \"device:/dev/tpm0\"\n[gateway]\ndata = \"gw\"\nlisten = \"127.0.0.1:8443\"\n",
        )
        .unwrap();
        let conf = d.path().join("conf.d");
        std::fs::create_dir(&conf).unwrap();
        std::fs::write(
            conf.join("20-later.toml"),
            "[gateway]\nlisten = \"0.0.0.0:9443\"\n",
        )
        .unwrap();
        std::fs::write(
            conf.join("10-first.toml"),
            "[gateway]\nlisten = \"0.0.0.0:8444\"\npolicy = \"school.csv\"\n",
        )
        .unwrap();
        std::fs::write(conf.join("notes.txt"), "not a snippet").unwrap();
        let l = Layers::find(Some(&main)).unwrap();
        assert_eq!(l.files.len(), 3, "{:?}", l.files);
        let c = l.config().unwrap();
        assert_eq!(c.tcti.as_deref(), Some("device:/dev/tpm0"));
        assert_eq!(c.gateway.listen, Some("0.0.0.0:9443".parse().unwrap()));
        assert_eq!(c.gateway.data, Some(d.path().join("gw")));
        assert_eq!(c.gateway.policy, Some(conf.join("school.csv")));
        let o = l.origins();
        assert_eq!(
            o["gateway.listen"].1,
            conf.join("20-later.toml").display().to_string()
        );
        assert_eq!(o["gateway.data"].1, main.display().to_string());
        assert_eq!(o["tpm.tcti"].0, "\"device:/dev/tpm0\"");
        // A broken snippet names its file.
        std::fs::write(conf.join("30-bad.toml"), "[gateway]\nlisten = 5\n").unwrap();
        let e = format!(
            "{:#}",
            Layers::find(Some(&main)).unwrap().config().unwrap_err()
        );
        assert!(e.contains("30-bad.toml"), "{e}");
        // A named file that does not exist is an error, not the defaults.
        assert!(Layers::find(Some(&d.path().join("missing.toml"))).is_err());
    }

    #[test]
    fn a_gateway_only_file_still_reads() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("gateway.toml");
        std::fs::write(&f, "data = \"gw\"\naccess-log = \"-\"\n").unwrap();
        let g = Layers::of(vec![f]).gateway().unwrap();
        assert_eq!(g.data, Some(d.path().join("gw")));
        assert_eq!(g.access_log, Some(PathBuf::from("-")));
    }
}
