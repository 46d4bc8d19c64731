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
        Ok(Config { tcti })
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
        Config::from_toml(&text).with_context(|| format!("config {}", path.display()))
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
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(Config::from_toml("[tpm]\ntcti = \"device:/dev/tpm0\"\ncolour = 1").is_err());
        assert!(Config::from_toml("[tmp]\ntcti = \"device:/dev/tpm0\"").is_err());
        assert!(Config::from_toml("[tpm]\ntcti = \"/dev/tpm0\"").is_err());
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }
}
