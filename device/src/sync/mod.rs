//! The device side of push-OS sync: pull an image's layers into a root
//! (one directory per layer), push the client's changes back.
//!
//! The device keeps, under its data directory:
//!
//! | path | what |
//! |---|---|
//! | `CDIR/chunks/` | its chunk store: every chunk it has verified |
//! | `CDIR/sync/IMAGE.json` | per layer, the version it last had in common with the gateway (`version`, `digest`, the signed `manifest`), and the pinned manifest key |
//!
//! A pull fetches only chunks the store lacks, in batches, each checked
//! against its id as it arrives and stored at once: after a cut or a
//! SIGKILL the next pull asks for none of them again. A layer is applied
//! only when all its chunks are there, by an atomic swap of its directory,
//! and the state file is replaced (write, sync, rename) after it.
//!
//! [`clean`] keeps only the chunks of the versions held; it never runs
//! under a pull or a push (the store's lock).

mod clean;
mod fetch;
mod local;
mod offer;
mod pull;
mod push;
mod state;

pub use clean::clean;
pub use local::{revert, stages, status, LayerStatus};
pub use pull::{pull, LayerFilter, Target};
pub use push::{pending, push, Pending};
pub use state::{state_path, LayerState, PullStats, PushReport, SyncState};

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// Talking to the gateway.
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
    /// The gateway refused.
    #[error("the gateway refused ({status}): {detail}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Its detail.
        detail: String,
    },
    /// The gateway sent something that does not check out.
    #[error("the gateway sent {0}")]
    Untrusted(String),
    /// The gateway offers a layer version older than the one this device
    /// holds (a rollback to a version with known flaws, say): refused.
    #[error("the gateway offers {image}/{layer} version {offered}, older than version {held} this device holds: refused as a rollback")]
    Rollback {
        /// The image.
        image: String,
        /// The layer.
        layer: String,
        /// The version offered.
        offered: u64,
        /// The version held.
        held: u64,
    },
    /// The local state, store or tree.
    #[error("{0}")]
    Local(String),
}

pub(crate) fn local(e: impl std::fmt::Display) -> SyncError {
    SyncError::Local(e.to_string())
}
