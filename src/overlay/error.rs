//! What the overlay operations refuse or fail with, typed until the CLI or a widget shows
//! them. `Display` gives the translated sentence: one sentence per case, with named
//! placeholders, never a word pasted into a sentence. Every refusal says that nothing was
//! changed; a failure midway says where the guest's data is.

use std::path::PathBuf;

use crate::i18n::tr_f;

fn p(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// Why a disk of a domain is not managed (listed by `status`, refused by `commit`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    /// A cdrom or floppy drive.
    Drive {
        device: String,
    },
    NetworkDisk,
    BlockDevice,
    PoolVolume,
    NotAFile,
    NoImage,
    /// The definition says the disk is not qcow2.
    DefinedNotQcow2 {
        format: String,
    },
    Missing {
        path: PathBuf,
        detail: String,
    },
    Symlink {
        path: PathBuf,
    },
    NotRegularFile {
        path: PathBuf,
    },
    NotQcow2 {
        path: PathBuf,
        format: String,
    },
    NoBackingFile {
        path: PathBuf,
    },
    BaseMissing {
        path: PathBuf,
        base: String,
    },
    ExternalDataFile {
        path: PathBuf,
        data_file: String,
    },
    PinMismatch {
        pin: PathBuf,
        path: PathBuf,
        base: PathBuf,
    },
    RemoteOnly {
        path: PathBuf,
        uri: String,
    },
    /// The definition's `<backingStore>` names another file than the overlay's header.
    BackingMismatch {
        overlay: PathBuf,
        xml_base: PathBuf,
        header_base: PathBuf,
    },
    /// An image could not be read (the tool's or libvirt's message is kept as it is).
    Unreadable {
        path: PathBuf,
        detail: String,
    },
    /// The libvirt engine could not be used for it.
    NotThroughLibvirt {
        detail: String,
        libvirt: String,
    },
}

/// What a commit or discard refuses (nothing was changed) or fails with (midway).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    NotFound {
        what: String,
    },
    DiskNotManaged {
        vm: String,
        disk: String,
        reason: Box<SkipReason>,
    },
    NoManagedDisk {
        vm: String,
        skipped: Vec<(String, SkipReason)>,
    },
    NoSuchDisk {
        vm: String,
        disk: String,
    },
    BaseChanged {
        overlay: PathBuf,
        now: PathBuf,
        was: PathBuf,
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
    /// libvirt holds a saved memory image that refers to the overlay's current contents.
    SavedState {
        vm: String,
    },
    /// libvirt snapshots of the domain (internal or external) name these images.
    Snapshots {
        vm: String,
        names: Vec<String>,
    },
    /// Internal snapshots stored in an image, unknown to libvirt.
    InternalSnapshots {
        path: PathBuf,
        names: Vec<String>,
    },
    /// libvirt checkpoints (incremental-backup bookmarks) of the domain.
    Checkpoints {
        vm: String,
        names: Vec<String>,
    },
    /// Persistent dirty bitmaps stored in an image.
    Bitmaps {
        path: PathBuf,
        names: Vec<String>,
    },
    /// The domain definition names another backing file than the overlay's header.
    BackingMismatch {
        vm: String,
        overlay: PathBuf,
        xml_base: PathBuf,
        header_base: PathBuf,
    },
    /// An interrupted commit was not finished: the overlay was written since (the VM ran).
    InterruptedAndWritten {
        vm: String,
        overlay: PathBuf,
        base: PathBuf,
    },
    /// A discard would leave firmware variables that do not go with the base, and the ones
    /// that do are not known.
    FirmwareUnknown {
        vm: String,
        nvram: PathBuf,
    },
    /// The firmware variables cannot be read or put back by this process.
    FirmwareUnreachable {
        vm: String,
        nvram: PathBuf,
        reason: String,
    },
    /// A disk that cannot be made disposable, and why.
    NotAdoptable {
        vm: String,
        disk: String,
        why: String,
    },
    /// The disk is already an overlay over a base.
    AlreadyDisposable {
        vm: String,
        disk: String,
    },
    /// A release needs the pending changes committed or discarded first, and was not told which.
    ReleaseWithChanges {
        vm: String,
        disk: String,
    },
    /// History (revisions, rollback) is not possible for this disk, and why.
    HistoryUnsupported {
        vm: String,
        disk: String,
        why: String,
    },
    /// The VM has no revision with this id.
    NoSuchRevision {
        vm: String,
        revision: u64,
    },
    /// A kept overlay whose base has changed since: it no longer reads as it did.
    RevisionStale {
        vm: String,
        revision: u64,
    },
    /// No disk of the VM has an undo point (see `history::undo_point`).
    NothingToUndo {
        vm: String,
    },
    /// Stopping being disposable ends a disk's history, and some of its revisions are pinned.
    PinnedRevisions {
        vm: String,
        disk: String,
        ids: String,
    },
    /// A rollback or an expiry failed after it started writing. `data` says where things are.
    HistoryFailed {
        overlay: PathBuf,
        detail: String,
        data: String,
    },
    /// Failed after it started writing. `data` says where the guest's data is now.
    Failed {
        op: super::OpKind,
        overlay: PathBuf,
        detail: String,
        data: String,
    },
}

fn why_no_disk(skipped: &[(String, SkipReason)]) -> String {
    if skipped.is_empty() {
        return crate::i18n::tr("it has no disks");
    }
    skipped
        .iter()
        .map(|(t, r)| format!("{t}: {r}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn failed_sentence(
    op: super::OpKind,
    overlay: &std::path::Path,
    detail: &str,
    data: &str,
) -> String {
    let args = [
        ("overlay", p(overlay)),
        ("detail", detail.to_string()),
        ("data", data.to_string()),
    ];
    let args: Vec<(&str, &str)> = args.iter().map(|(k, v)| (*k, v.as_str())).collect();
    match op {
        super::OpKind::Commit => tr_f("The commit of {overlay} failed: {detail}. {data}", &args),
        super::OpKind::Discard => tr_f("The discard of {overlay} failed: {detail}. {data}", &args),
    }
}

impl OpError {
    /// The process exit code for this class of error (a contract with scripts).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Failed { .. } | Self::HistoryFailed { .. } => 1,
            Self::NoSuchRevision { .. } | Self::NothingToUndo { .. } => 3,
            Self::HistoryUnsupported { .. } => 17,
            Self::RevisionStale { .. } => 18,
            Self::PinnedRevisions { .. } => 19,
            Self::NotFound { .. } | Self::NoSuchDisk { .. } => 3,
            Self::DiskNotManaged { .. } | Self::NoManagedDisk { .. } | Self::BaseChanged { .. } => {
                4
            }
            Self::DomainActive { .. } => 5,
            Self::Locked { .. } | Self::Busy { .. } | Self::InterruptedAndWritten { .. } => 6,
            Self::SharedBase { .. } => 7,
            Self::NoSpace { .. } => 8,
            Self::NotWritable { .. } => 9,
            Self::SavedState { .. } => 11,
            Self::Snapshots { .. } | Self::InternalSnapshots { .. } => 12,
            Self::Checkpoints { .. } | Self::Bitmaps { .. } => 13,
            Self::BackingMismatch { .. } => 14,
            Self::FirmwareUnknown { .. } | Self::FirmwareUnreachable { .. } => 15,
            Self::NotAdoptable { .. } => 4,
            Self::AlreadyDisposable { .. } => 16,
            Self::ReleaseWithChanges { .. } => 10,
        }
    }

    /// The state that blocks the VM, named for `status --json` (`"blocked"`), or `None` for
    /// errors that are not a state of the VM.
    pub fn blocking_kind(&self) -> Option<&'static str> {
        Some(match self {
            Self::SavedState { .. } => "managed-save",
            Self::Snapshots { .. } => "snapshots",
            Self::InternalSnapshots { .. } => "internal-snapshots",
            Self::Checkpoints { .. } => "checkpoints",
            Self::Bitmaps { .. } => "bitmaps",
            Self::BackingMismatch { .. } => "backing-mismatch",
            Self::FirmwareUnknown { .. } | Self::FirmwareUnreachable { .. } => "firmware-variables",
            Self::Busy { .. } | Self::InterruptedAndWritten { .. } => "pending-operation",
            Self::NoManagedDisk { .. } | Self::DiskNotManaged { .. } => "not-managed",
            _ => return None,
        })
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let text = match self {
            Self::Drive { device } => tr_f("{device} drive", &[("device", device)]),
            Self::NetworkDisk => crate::i18n::tr("network disk"),
            Self::BlockDevice => crate::i18n::tr("block device"),
            Self::PoolVolume => crate::i18n::tr("storage-pool volume"),
            Self::NotAFile => crate::i18n::tr("not a file"),
            Self::NoImage => crate::i18n::tr("no image"),
            Self::DefinedNotQcow2 { format } => tr_f("{format} image: only qcow2 overlays are managed", &[("format", format)]),
            Self::Missing { path, detail } => tr_f("overlay {path} is missing: {detail}", &[("path", &p(path)), ("detail", detail)]),
            Self::Symlink { path } => tr_f("overlay {path} is a symlink; name the real file so it can be replaced safely", &[("path", &p(path))]),
            Self::NotRegularFile { path } => tr_f("{path} is not a regular file", &[("path", &p(path))]),
            Self::NotQcow2 { path, format } => tr_f("{path} is a {format} image, not a qcow2 overlay", &[("path", &p(path)), ("format", format)]),
            Self::NoBackingFile { path } => tr_f("{path} has no backing file: it is not an overlay", &[("path", &p(path))]),
            Self::BaseMissing { path, base } => tr_f("the base {base} of {path} is missing", &[("base", base), ("path", &p(path))]),
            Self::ExternalDataFile { path, data_file } => tr_f("{path} keeps its data in the external file {data_file}; such images are not managed", &[("path", &p(path)), ("data_file", data_file)]),
            Self::PinMismatch { pin, path, base } => tr_f("pinned base {pin} is not the backing file of {path} (which is {base})", &[("pin", &p(pin)), ("path", &p(path)), ("base", &p(base))]),
            Self::RemoteOnly { path, uri } => tr_f("{path} is on the host of {uri}: only the libvirt engine can reach it", &[("path", &p(path)), ("uri", uri)]),
            Self::BackingMismatch { overlay, xml_base, header_base } => tr_f("the definition says the backing file of {overlay} is {xml_base}, but the image itself says {header_base}", &[("overlay", &p(overlay)), ("xml_base", &p(xml_base)), ("header_base", &p(header_base))]),
            Self::Unreadable { path, detail } => tr_f("cannot read {path}: {detail}", &[("path", &p(path)), ("detail", detail)]),
            Self::NotThroughLibvirt { detail, libvirt } => tr_f("{detail}; through libvirt: {libvirt}", &[("detail", detail), ("libvirt", libvirt)]),
        };
        f.write_str(&text)
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let text = match self {
            Self::NotFound { what } => tr_f("{what}. Nothing was changed.", &[("what", what)]),
            Self::DiskNotManaged { vm, disk, reason } => tr_f("disk {disk} of {vm} is not managed: {reason}. Nothing was changed.", &[("disk", disk), ("vm", vm), ("reason", &reason.to_string())]),
            Self::NoManagedDisk { vm, skipped } => tr_f("{vm} has no managed disk ({why}). Nothing was changed.", &[("vm", vm), ("why", &why_no_disk(skipped))]),
            Self::NoSuchDisk { vm, disk } => tr_f("{vm} has no disk {disk}. Nothing was changed.", &[("vm", vm), ("disk", disk)]),
            Self::BaseChanged { overlay, now, was } => tr_f("the backing file of {overlay} is now {now}, not {was}. Nothing was changed.", &[("overlay", &p(overlay)), ("now", &p(now)), ("was", &p(was))]),
            Self::DomainActive { domain, state } => tr_f("{vm} is {state}: its overlay and base are in use, so nothing was changed. Shut it down first.", &[("vm", domain), ("state", state)]),
            Self::Locked { path } => tr_f("{path} is open in another process (it holds QEMU's image lock: a running guest, qemu-img, qemu-io or qemu-nbd). Nothing was changed.", &[("path", &p(path))]),
            Self::SharedBase { base, users } => tr_f("the base {base} is also the backing file of {users}; committing into it would corrupt them. Nothing was changed.", &[("base", &p(base)), ("users", &users.join(", "))]),
            Self::NoSpace { base, need, free } => tr_f("not enough free space to commit into {base}: {need} bytes needed, {free} free. Nothing was changed.", &[("base", &p(base)), ("need", &need.to_string()), ("free", &free.to_string())]),
            Self::NotWritable { what, reason } => tr_f("{what} is not writable ({reason}). Nothing was changed.", &[("what", what), ("reason", reason)]),
            Self::Busy { overlay, journal } => tr_f("another operation on {overlay} is in progress or was interrupted (journal {journal}). Nothing was changed.", &[("overlay", &p(overlay)), ("journal", &p(journal))]),
            Self::SavedState { vm } => tr_f("{vm} has a saved state (its memory, saved by `virsh managedsave`, virt-manager or libvirt-guests) that needs its disk exactly as it is. Nothing was changed. Start {vm} and shut it down, or remove the saved state with `virsh managedsave-remove {vm}`.", &[("vm", vm)]),
            Self::Snapshots { vm, names } => tr_f("{vm} has libvirt snapshots ({names}) that need its images exactly as they are. Nothing was changed. Delete them with `virsh snapshot-delete {vm} NAME` if they are no longer needed.", &[("vm", vm), ("names", &names.join(", "))]),
            Self::InternalSnapshots { path, names } => tr_f("{path} holds internal snapshots ({names}); discarding or rebuilding it would delete them. Nothing was changed. Remove them with `qemu-img snapshot -d NAME {path}` if they are no longer needed.", &[("path", &p(path)), ("names", &names.join(", "))]),
            Self::Checkpoints { vm, names } => tr_f("{vm} has libvirt checkpoints ({names}) whose dirty bitmaps live in its overlay; an incremental backup would break. Nothing was changed. Delete them with `virsh checkpoint-delete {vm} NAME` if they are no longer needed.", &[("vm", vm), ("names", &names.join(", "))]),
            Self::Bitmaps { path, names } => tr_f("{path} holds persistent dirty bitmaps ({names}) that a backup tool relies on; they would be lost. Nothing was changed. Remove them with `qemu-img bitmap --remove {path} NAME` if they are no longer needed.", &[("path", &p(path)), ("names", &names.join(", "))]),
            Self::BackingMismatch { vm, overlay, xml_base, header_base } => tr_f("the definition of {vm} says the backing file of {overlay} is {xml_base}, but the image itself says {header_base}; QEMU would use the definition's. Nothing was changed. Make them agree (`virsh edit {vm}` or `qemu-img rebase -u`).", &[("vm", vm), ("overlay", &p(overlay)), ("xml_base", &p(xml_base)), ("header_base", &p(header_base))]),
            Self::InterruptedAndWritten { vm, overlay, base } => tr_f("an interrupted commit of {overlay} was not finished, because the overlay was written since ({vm} ran). The guest's data is intact: {overlay} holds all of it, and {base} holds part of the earlier session. Commit again to finish (`vmoverlay commit {vm}`); a discard is refused until then, because the base alone is not consistent.", &[("vm", vm), ("overlay", &p(overlay)), ("base", &p(base))]),
            Self::FirmwareUnknown { vm, nvram } => tr_f("the UEFI variables of {vm} ({nvram}) that go with its base are not known, so a discard would keep what its discarded sessions wrote there (boot entries, Secure Boot state). Nothing was changed. Commit once (VM Overlay then records them), or discard with --keep-firmware to keep the current variables.", &[("vm", vm), ("nvram", &p(nvram))]),
            Self::FirmwareUnreachable { vm, nvram, reason } => tr_f("the UEFI variables of {vm} ({nvram}) cannot be kept in step with its disk from here ({reason}). Nothing was changed. Run VM Overlay as a user who can read and write them, or discard with --keep-firmware to keep the current variables.", &[("vm", vm), ("nvram", &p(nvram)), ("reason", reason)]),
            Self::NotAdoptable { vm, disk, why } => tr_f("disk {disk} of {vm} cannot be made disposable: {why}. Nothing was changed.", &[("disk", disk), ("vm", vm), ("why", why)]),
            Self::AlreadyDisposable { vm, disk } => tr_f("disk {disk} of {vm} is already disposable (an overlay over a base). Nothing was changed.", &[("disk", disk), ("vm", vm)]),
            Self::ReleaseWithChanges { vm, disk } => tr_f("disk {disk} of {vm} has changes that are neither committed nor discarded. Nothing was changed. Say which with --commit or --discard.", &[("disk", disk), ("vm", vm)]),
            Self::HistoryUnsupported { vm, disk, why } => tr_f("disk {disk} of {vm} keeps no history: {why}. Nothing was changed.", &[("disk", disk), ("vm", vm), ("why", why)]),
            Self::NoSuchRevision { vm, revision } => tr_f("{vm} has no revision {revision} (see `vmoverlay history {vm}`). Nothing was changed.", &[("vm", vm), ("revision", &revision.to_string())]),
            Self::PinnedRevisions { vm, disk, ids } => tr_f("disk {disk} of {vm} has pinned revisions ({ids}); once it is no longer disposable its history ends and they would be deleted. Nothing was changed. Roll back to one first, or unpin them (`vmoverlay unpin {vm} REVISION`).", &[("disk", disk), ("vm", vm), ("ids", ids)]),
            Self::NothingToUndo { vm } => tr_f("{vm} has nothing to undo: its last commit, discard or rollback kept no revision, or the VM has changed since (see `vmoverlay history {vm}` to roll back to any revision). Nothing was changed.", &[("vm", vm)]),
            Self::RevisionStale { vm, revision } => tr_f("revision {revision} of {vm} holds changes written over an earlier state of its base, which has changed since; they would no longer read as they did. Nothing was changed. Roll back to the revision taken before that change first.", &[("vm", vm), ("revision", &revision.to_string())]),
            Self::HistoryFailed { overlay, detail, data } => tr_f("The history operation on {overlay} failed: {detail}. {data}", &[("overlay", &p(overlay)), ("detail", detail), ("data", data)]),
            Self::Failed { op, overlay, detail, data } => failed_sentence(*op, overlay, detail, data),
        };
        f.write_str(&text)
    }
}
