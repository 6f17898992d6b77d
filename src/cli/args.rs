//! The command line's types: arguments (clap), exit codes and help texts. Output formats
//! and exit codes are a contract that scripts rely on.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::jobs::Context;
use crate::libvirt;
use crate::overlay::{image, Engine, EngineChoice, Pin};

/// Exit codes: distinct per failure class, so scripts can tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Exit {
    Ok = 0,
    Failure = 1,
    /// A connection URI could not be opened.
    Connect = 2,
    /// The named domain (or disk) does not exist.
    NotFound = 3,
}

/// Exit codes of refusals (see `OpError::exit_code`): 4 not managed, 5 running, 6 locked or
/// busy, 7 shared base, 8 no space, 9 not writable; 10 not confirmed; 11 saved state (managed
/// save), 12 snapshots, 13 checkpoints or dirty bitmaps, 14 definition and image disagree on
/// the backing file; 15 firmware variables; 16 already disposable; 17 no history for this disk
/// (raw base, libvirt engine); 18 the revision's base has changed since.
pub const EXIT_NOT_CONFIRMED: i32 = 10;
pub const EXIT_USAGE: i32 = 64;

// Help texts are translated: clap evaluates these expressions when it builds the command,
// after `i18n::init` (see `mod help`).
#[derive(Debug, Parser)]
#[command(
    name = "vmoverlay",
    version = crate::config::VERSION,
    about = help::about(),
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[arg(long = "connect", short = 'c', value_name = "URI", global = true,
          help = help::connect())]
    pub connect: Vec<String>,

    #[arg(long, value_enum, default_value_t = EngineArg::Auto, global = true,
          help = help::engine())]
    pub engine: EngineArg,

    #[command(subcommand)]
    pub command: Option<Command>,

    #[arg(help = help::old_vm())]
    pub vm: Option<String>,
    #[arg(long, value_name = "PATH", requires = "vm", help = help::old_overlay())]
    pub overlay: Option<PathBuf>,
    #[arg(long, value_name = "PATH", requires = "vm", help = help::old_base())]
    pub base: Option<PathBuf>,

    #[arg(long, conflicts_with_all = ["vm", "connect"],
          help = help::demo())]
    pub demo: bool,
}

/// `--engine`: who works on the images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineArg {
    Auto,
    QemuImg,
    Libvirt,
}

impl EngineArg {
    pub fn choice(self) -> EngineChoice {
        match self {
            Self::Auto => EngineChoice::Auto,
            Self::QemuImg => EngineChoice::Only(Engine::QemuImg),
            Self::Libvirt => EngineChoice::Only(Engine::Libvirt),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(about = help::status())]
    Status {
        #[arg(help = help::only_vm())]
        vm: Option<String>,
        #[arg(long, help = help::json_array())]
        json: bool,
    },
    #[command(about = help::watch())]
    Watch {
        #[arg(long, help = help::json_lines())]
        json: bool,
    },
    #[command(about = help::commit())]
    Commit(OpArgs),
    #[command(about = help::discard())]
    Discard(DiscardArgs),
    #[command(about = help::adopt())]
    Adopt(OpArgs),
    #[command(about = help::release())]
    Release(ReleaseArgs),
    #[command(about = help::history())]
    History {
        #[arg(help = help::vm())]
        vm: String,
        #[arg(long, value_name = "TARGET", help = help::disk())]
        disk: Option<String>,
        #[arg(long, help = help::json_array())]
        json: bool,
    },
    #[command(about = help::rollback())]
    Rollback(RevisionArgs),
    #[command(about = help::undo())]
    Undo {
        #[arg(help = help::vm())]
        vm: String,
        #[arg(long, short = 'y', help = help::yes())]
        yes: bool,
    },
    #[command(about = help::pin())]
    Pin {
        #[command(flatten)]
        rev: RevisionArgs,
        #[arg(long, value_name = "TEXT", help = help::label())]
        label: Option<String>,
    },
    #[command(about = help::unpin())]
    Unpin(RevisionArgs),
    #[command(about = help::keep())]
    Keep {
        #[arg(help = help::vm())]
        vm: String,
        #[arg(help = help::keep_n())]
        n: u32,
        #[arg(long, value_name = "TARGET", help = help::disk())]
        disk: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct RevisionArgs {
    #[arg(help = help::vm())]
    pub vm: String,
    #[arg(help = help::revision())]
    pub revision: u64,
    #[arg(long, value_name = "TARGET", help = help::disk())]
    pub disk: Option<String>,
    #[arg(long, short = 'y', help = help::yes())]
    pub yes: bool,
}

#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub op: OpArgs,
    #[arg(long, conflicts_with = "discard", help = help::release_commit())]
    pub commit: bool,
    #[arg(long, help = help::release_discard())]
    pub discard: bool,
}

#[derive(Debug, clap::Args)]
pub struct DiscardArgs {
    #[command(flatten)]
    pub op: OpArgs,
    #[arg(long, help = help::keep_firmware())]
    pub keep_firmware: bool,
}

#[derive(Debug, clap::Args)]
pub struct OpArgs {
    #[arg(help = help::vm())]
    pub vm: String,
    #[arg(long, value_name = "TARGET", help = help::disk())]
    pub disk: Option<String>,
    #[arg(long, short = 'y', help = help::yes())]
    pub yes: bool,
}

/// The help texts, as functions: xgettext reads Rust as C, where a line starting with `#` (an
/// attribute) is a preprocessor line it skips, so no `tr("…")` may stand inside `#[…]`.
mod help {
    use crate::i18n::tr;

    pub fn about() -> String {
        tr("Keeps libvirt/QEMU guests disposable: commit or discard a qcow2 overlay when a guest shuts down")
    }

    pub fn connect() -> String {
        tr("libvirt connection URI (repeatable)")
    }

    pub fn engine() -> String {
        tr("Who works on the images: qemu-img in this process, libvirtd, or auto (qemu-img when this process can write the images, libvirtd otherwise)")
    }

    pub fn old_vm() -> String {
        tr("Old form: the VM whose overlay/base are pinned with --overlay/--base")
    }

    pub fn old_overlay() -> String {
        tr("Old form: pin this overlay image for VM")
    }

    pub fn old_base() -> String {
        tr("Old form: pin this base image for VM")
    }

    pub fn demo() -> String {
        tr("Show the real flow without any VM: a demo guest on libvirt's test driver, with real overlay images in the cache directory")
    }

    pub fn status() -> String {
        tr("Every domain with its state, its managed disks and their changes")
    }

    pub fn only_vm() -> String {
        tr("Only this domain")
    }

    pub fn json_array() -> String {
        tr("One JSON array instead of a table")
    }

    pub fn watch() -> String {
        tr("Print one line per lifecycle event until interrupted")
    }

    pub fn json_lines() -> String {
        tr("One JSON object per line")
    }

    pub fn commit() -> String {
        tr("Merge a shut-off VM's overlay into its base, then rebuild the overlay empty")
    }

    pub fn discard() -> String {
        tr("Throw away a shut-off VM's overlay changes: rebuild the overlay empty, base untouched")
    }

    pub fn vm() -> String {
        tr("The domain")
    }

    pub fn disk() -> String {
        tr("Only this disk (its target, e.g. vda); default: every managed disk")
    }

    pub fn yes() -> String {
        tr("Do not ask for confirmation (required when not on a terminal)")
    }

    pub fn adopt() -> String {
        tr("Make a shut-off VM disposable: each disk's image becomes the base of a new, empty overlay the VM writes to from now on")
    }

    pub fn release() -> String {
        tr("Make a disposable VM ordinary again: its disks use their base images directly, the overlays are removed")
    }

    pub fn release_commit() -> String {
        tr("Commit pending changes into the base first")
    }

    pub fn release_discard() -> String {
        tr("Discard pending changes first")
    }

    pub fn history() -> String {
        tr("A VM's revisions, newest first: the states its disks can be rolled back to")
    }

    pub fn rollback() -> String {
        tr("Return a shut-off VM's disk (base and overlay) to a revision; the state left becomes a revision too")
    }

    pub fn undo() -> String {
        tr("Undo a shut-off VM's last commit, discard or rollback, while nothing has happened since (the state left becomes a revision too)")
    }

    pub fn pin() -> String {
        tr("Keep a revision however many newer ones there are, optionally with a label")
    }

    pub fn unpin() -> String {
        tr("Let a pinned revision expire again")
    }

    pub fn keep() -> String {
        tr("How many revisions to keep per disk (pinned ones are kept besides; 0 turns history off)")
    }

    pub fn keep_n() -> String {
        tr("Number of revisions")
    }

    pub fn revision() -> String {
        tr("The revision's id (see `vmoverlay history VM`)")
    }

    pub fn label() -> String {
        tr("A label for the revision (empty removes it)")
    }

    pub fn keep_firmware() -> String {
        tr("Keep a UEFI VM's firmware variables as they are, instead of putting back those that go with the base")
    }
}

impl Cli {
    /// Parses a full argument vector (the process's, or a second launch's that the running
    /// application receives). Writes nothing anywhere.
    pub fn try_parse_from_args(args: &[String]) -> Result<Cli, clap::Error> {
        <Cli as Parser>::try_parse_from(args)
    }

    /// The old command line's `VM --overlay PATH --base PATH`: pins for this run only.
    pub fn run_pins(&self) -> Vec<(String, Pin)> {
        match (&self.vm, &self.overlay, &self.base) {
            (Some(vm), Some(overlay), Some(base)) => vec![(
                vm.clone(),
                Pin {
                    overlay: image::absolute(overlay),
                    base: image::absolute(base),
                },
            )],
            _ => Vec::new(),
        }
    }

    /// The pipeline's context for this command line.
    pub fn context(&self) -> Context {
        let mut ctx = Context::new(self.engine.choice());
        ctx.run_pins = self.run_pins();
        ctx
    }

    pub fn uris(&self) -> Vec<String> {
        if self.connect.is_empty() {
            vec![libvirt::DEFAULT_URI.to_string()]
        } else {
            self.connect.clone()
        }
    }
}
