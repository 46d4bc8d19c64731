//! Why a boot chain could not be read or planned. Every variant names the
//! chain file or the stage.

use std::path::PathBuf;

/// A boot-chain file that could not be loaded, or a stage that could not be hashed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// The chain file could not be read.
    #[error("reading boot chain {path}")]
    Read {
        /// The chain file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The chain file is not valid TOML of the chain format.
    #[error("boot chain {path} is not valid")]
    Syntax {
        /// The chain file.
        path: PathBuf,
        /// What TOML or the format said.
        #[source]
        source: toml::de::Error,
    },
    /// A stage breaks a rule of the format.
    #[error("boot chain {path}: stage {index} ({name:?}): {reason}")]
    Stage {
        /// The chain file.
        path: PathBuf,
        /// Stage number, from 1.
        index: usize,
        /// Stage name as written.
        name: String,
        /// The rule broken.
        reason: String,
    },
    /// The chain has no stages.
    #[error("boot chain {path} has no stages")]
    Empty {
        /// The chain file.
        path: PathBuf,
    },
    /// A stage's file could not be read.
    #[error("stage {stage:?}: reading {file}")]
    StageFile {
        /// The stage.
        stage: String,
        /// The file.
        file: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
