//! The engine: discovers managed disks and commits, discards and rebuilds overlays.
//! Pure Rust plus qemu-img subprocesses: no GTK, no libvirt (the caller supplies a
//! [`DomainCheck`]). Blocking work runs on a worker thread and reports over a channel, so it
//! never blocks the caller's main loop.

pub mod backend;
pub mod chain;
pub mod error;
pub mod image;
pub mod journal;
pub mod ops;

pub use backend::{EngineChoice, EngineKind, Images};
pub use chain::{discover, discover_with, DomainDisks, ManagedDisk, Pin, SkippedDisk};
pub use error::EngineError;
pub use journal::{Journal, OpKind, Record};
pub use ops::{DomainCheck, Outcome, Progress, Request};

/// What a running job reports, in order: any number of `Progress`, then one `Done`.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    Progress(Progress),
    Done(Result<Outcome, EngineError>),
}

/// Runs `req` on a worker thread. Await the receiver on any main loop (or `recv_blocking`).
pub fn spawn(
    req: Request,
    check: Box<dyn DomainCheck>,
    journal: Journal,
) -> async_channel::Receiver<JobEvent> {
    let (tx, rx) = async_channel::unbounded();
    std::thread::Builder::new()
        .name(format!("{} {}", req.op.word(), req.disk.target))
        .spawn(move || {
            let progress_tx = tx.clone();
            let mut progress = move |p| {
                let _ = progress_tx.try_send(JobEvent::Progress(p));
            };
            let result = ops::run(&req, check.as_ref(), &journal, &mut progress);
            let _ = tx.try_send(JobEvent::Done(result));
        })
        .expect("spawn engine worker");
    rx
}

/// Builds the [`DomainCheck`] for the domain a journal record names.
pub type CheckFactory<'a> = &'a dyn Fn(&Record) -> Result<Box<dyn DomainCheck>, EngineError>;

/// Finishes every interrupted operation in `journal` (an interrupted commit is completed,
/// an interrupted rebuild finished), before anything else happens to those VMs.
pub fn recover(
    journal: &Journal,
    make_check: CheckFactory,
    progress: &mut dyn FnMut(&Record, Progress),
) -> Vec<(Record, Result<Outcome, EngineError>)> {
    let mut out = Vec::new();
    for entry in journal.pending() {
        let rec = match entry {
            Ok(rec) => rec,
            Err((path, e)) => {
                log::error!("unreadable journal record {}: {e}", path.display());
                continue;
            }
        };
        let result = make_check(&rec).and_then(|check| {
            ops::resume(rec.clone(), check.as_ref(), journal, &mut |p| {
                progress(&rec, p)
            })
        });
        out.push((rec, result));
    }
    out
}
