//! The configuration file (TOML), read in two stages: a raw serde struct
//! that refuses unknown keys, then validation into [`Config`]. Every option
//! resolves as default, then file, then `SATCHEL_*` environment, then flag.
//!
//! The file is `--config FILE`, else `$SATCHEL_CONFIG`, else
//! `/etc/satchel/satchel.toml` when it exists; no file means defaults.
//! Documented in docs/config.md; `examples/satchel.toml` is the sample.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// Where the configuration is looked for when no file is named.
pub(crate) const DEFAULT_PATH: &str = "/etc/satchel/satchel.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    tpm: RawTpm,
    #[serde(default)]
    agent: Option<AgentFile>,
}

/// The `[agent]` table: the options of `satchel agent`, each below its
/// flag. Relative paths are relative to the file. See docs/agent.md.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct AgentFile {
    pub(crate) bundle: Option<PathBuf>,
    pub(crate) bundle_key: Option<PathBuf>,
    pub(crate) subject: Option<String>,
    #[serde(default)]
    pub(crate) mount: Vec<PathBuf>,
    pub(crate) root: Option<PathBuf>,
    #[serde(default)]
    pub(crate) interpreter: Vec<PathBuf>,
    #[serde(default)]
    pub(crate) allow_open_system: bool,
    pub(crate) mode: Option<String>,
    pub(crate) gateway: Option<String>,
    pub(crate) ca: Option<PathBuf>,
    pub(crate) data: Option<PathBuf>,
    #[serde(default)]
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

impl AgentFile {
    /// Make every relative path relative to `dir`.
    fn rebase(mut self, dir: &Path) -> AgentFile {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        for p in [
            &mut self.bundle,
            &mut self.bundle_key,
            &mut self.ca,
            &mut self.data,
            &mut self.state_dir,
            &mut self.into,
            &mut self.root,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        self.mount.iter_mut().for_each(fix);
        self.interpreter.iter_mut().for_each(fix);
        self.log.iter_mut().for_each(fix);
        self
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTpm {
    tcti: Option<String>,
}

/// The validated configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Config {
    /// `[tpm] tcti`: the TPM's TCTI, below `--tpm` and `$SATCHEL_TPM`.
    pub(crate) tcti: Option<String>,
    /// `[agent]`: the agent's options.
    pub(crate) agent: AgentFile,
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
            agent: raw.agent.unwrap_or_default(),
        })
    }
}

impl Config {
    /// Parse and validate configuration text.
    pub(crate) fn from_toml(text: &str) -> anyhow::Result<Config> {
        let raw: RawConfig = toml::from_str(text)?;
        Config::try_from(raw)
    }

    /// Load the file named by the flag or `$SATCHEL_CONFIG`, or the default
    /// path if it exists, or nothing.
    pub(crate) fn load(flag: Option<&Path>) -> anyhow::Result<Config> {
        let named = flag
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("SATCHEL_CONFIG").map(PathBuf::from));
        let path = match named {
            Some(p) => p,
            None if Path::new(DEFAULT_PATH).exists() => PathBuf::from(DEFAULT_PATH),
            None => return Ok(Config::default()),
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let mut c =
            Config::from_toml(&text).with_context(|| format!("config {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        c.agent = c.agent.rebase(dir);
        Ok(c)
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
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }
}
