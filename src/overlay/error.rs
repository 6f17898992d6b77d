//! What the engine refuses or fails with. Every refusal says that nothing was changed; a
//! failure midway says where the guest's data is.

use std::path::PathBuf;

use crate::i18n::tr_f;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineError {
    NotFound {
        what: String,
    },
    NotManaged {
        what: String,
    },
    DomainActive {
        domain: String,
        state: String,
    },
    Locked {
        path: PathBuf,
    },
    SharedBase {
        base: PathBuf,
        users: Vec<String>,
    },
    NoSpace {
        base: PathBuf,
        need: u64,
        free: u64,
    },
    NotWritable {
        what: String,
        reason: String,
    },
    Busy {
        overlay: PathBuf,
        journal: PathBuf,
    },
    /// Failed after it started writing. `data` says where the guest's data is now.
    Failed {
        op: String,
        overlay: PathBuf,
        detail: String,
        data: String,
    },
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let p = |p: &PathBuf| p.display().to_string();
        let text = match self {
            Self::NotFound { what } | Self::NotManaged { what } => {
                tr_f("{what}. Nothing was changed.", &[("what", what)])
            }
            Self::DomainActive { domain, state } => tr_f(
                "{vm} is {state}: its overlay and base are in use, so nothing was changed. Shut it down first.",
                &[("vm", domain), ("state", state)],
            ),
            Self::Locked { path } => tr_f(
                "{path} is open in another process (it holds QEMU's image lock: a running guest, qemu-img, qemu-io or qemu-nbd). Nothing was changed.",
                &[("path", &p(path))],
            ),
            Self::SharedBase { base, users } => tr_f(
                "the base {base} is also the backing file of {users}; committing into it would corrupt them. Nothing was changed.",
                &[("base", &p(base)), ("users", &users.join(", "))],
            ),
            Self::NoSpace { base, need, free } => tr_f(
                "not enough free space to commit into {base}: {need} bytes needed, {free} free. Nothing was changed.",
                &[("base", &p(base)), ("need", &need.to_string()), ("free", &free.to_string())],
            ),
            Self::NotWritable { what, reason } => tr_f(
                "{what} is not writable ({reason}). Nothing was changed.",
                &[("what", what), ("reason", reason)],
            ),
            Self::Busy { overlay, journal } => tr_f(
                "another operation on {overlay} is in progress or was interrupted (journal {journal}). Nothing was changed.",
                &[("overlay", &p(overlay)), ("journal", &p(journal))],
            ),
            Self::Failed {
                op,
                overlay,
                detail,
                data,
            } => tr_f(
                "{operation} of {overlay} failed: {detail}. {data}",
                &[("operation", op), ("overlay", &p(overlay)), ("detail", detail), ("data", data)],
            ),
        };
        f.write_str(&text)
    }
}

impl std::error::Error for EngineError {}

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
