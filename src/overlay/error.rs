//! What the engine refuses or fails with. Every refusal says that nothing was changed; a
//! failure midway says where the guest's data is.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EngineError {
    #[error("{what}. Nothing was changed.")]
    NotFound { what: String },

    #[error("{what}. Nothing was changed.")]
    NotManaged { what: String },

    #[error("{domain} is {state}: its overlay and base are in use, so nothing was changed. Shut it down first.")]
    DomainActive { domain: String, state: String },

    #[error("{} is open in another process (it holds QEMU's image lock: a running guest, qemu-img, qemu-io or qemu-nbd). Nothing was changed.", path.display())]
    Locked { path: PathBuf },

    #[error("the base {} is also the backing file of {}; committing into it would corrupt them. Nothing was changed.", base.display(), users.join(", "))]
    SharedBase { base: PathBuf, users: Vec<String> },

    #[error("not enough free space to commit into {}: {need} bytes needed, {free} free. Nothing was changed.", base.display())]
    NoSpace { base: PathBuf, need: u64, free: u64 },

    #[error("{what} is not writable ({reason}). Nothing was changed.")]
    NotWritable { what: String, reason: String },

    #[error("another operation on {} is in progress or was interrupted (journal {}). Nothing was changed.", overlay.display(), journal.display())]
    Busy { overlay: PathBuf, journal: PathBuf },

    /// Failed after it started writing. `data` says where the guest's data is now.
    #[error("{op} of {} failed: {detail}. {data}", overlay.display())]
    Failed {
        op: String,
        overlay: PathBuf,
        detail: String,
        data: String,
    },
}

impl EngineError {
    /// The process exit code for this class of error (a contract with scripts).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Failed { .. } => 1,
            Self::NotFound { .. } => 3,
            Self::NotManaged { .. } => 4,
            Self::DomainActive { .. } => 5,
            Self::Locked { .. } | Self::Busy { .. } => 6,
            Self::SharedBase { .. } => 7,
            Self::NoSpace { .. } => 8,
            Self::NotWritable { .. } => 9,
        }
    }
}
