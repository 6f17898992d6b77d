//! Domain lookups the engine and the CLI need, over libvirt's safe API.

use std::path::Path;
use std::sync::OnceLock;

use virt::connect::Connect;
use virt::domain::Domain;

use super::engine::{is_local_uri, LibvirtImages};
use super::events::DomainState;
use super::ffi;
use crate::overlay::backend::{locally_writable, QemuImg};
use crate::overlay::chain::parse_disks;
use crate::overlay::{
    image, DomainCheck, DomainDisks, EngineChoice, EngineError, EngineKind, Images, ManagedDisk,
    Record,
};

pub fn state(dom: &Domain) -> Result<DomainState, virt::error::Error> {
    let (s, r) = ffi::domain_state(dom)?;
    Ok(DomainState::from_raw(s, r))
}

/// A domain's disks as the engine sees them: its current definition, with the user's pins,
/// each disk with the engine `choice` gives it.
pub fn domain_disks(check: &LibvirtCheck, choice: EngineChoice) -> Result<DomainDisks, String> {
    let xml = check
        .conn
        .lookup_domain_by_name(&check.domain)
        .and_then(|d| d.xml_desc(0))
        .map_err(|e| e.message().to_string())?;
    let pins = crate::settings::pins_for(&check.domain)?;
    let local = is_local_uri(&check.uri);
    let via_libvirt = |target: &str, source: &Path| -> Result<ManagedDisk, String> {
        check
            .libvirt_images()
            .map_err(|e| e.to_string())?
            .inspect(target, source)
    };
    let inspect = |target: &str, source: &Path| -> Result<ManagedDisk, String> {
        match choice {
            EngineChoice::Only(EngineKind::QemuImg) if !local => Err(format!(
                "{} is on the host of {}: only the libvirt engine can reach it",
                source.display(),
                check.uri
            )),
            EngineChoice::Only(EngineKind::QemuImg) => QemuImg.inspect(target, source),
            EngineChoice::Only(EngineKind::Libvirt) => via_libvirt(target, source),
            EngineChoice::Auto if !local => via_libvirt(target, source),
            EngineChoice::Auto => match QemuImg.inspect(target, source) {
                Ok(disk) if locally_writable(&disk) => Ok(disk),
                // Readable but not writable here: let libvirtd work.
                Ok(disk) => via_libvirt(target, source).or(Ok(disk)),
                // Not even readable here (or not here at all, as in a sandbox): libvirtd.
                // A refusal about the image itself (a symlink, no backing file) stands.
                Err(e) if std::fs::File::open(source).is_err() => {
                    via_libvirt(target, source).map_err(|lv| format!("{e}; through libvirt: {lv}"))
                }
                Err(e) => Err(e),
            },
        }
    };
    crate::overlay::discover_with(&xml, &pins, &inspect)
}

/// The check for the domain a journal record names, over a new read-only connection to the
/// record's URI (how interrupted operations are resumed). The libvirt engine opens its own
/// read-write connection when the record's disk needs it.
pub fn check_for_record(rec: &Record) -> Result<Box<dyn DomainCheck>, EngineError> {
    let conn = super::open(&rec.uri, true).map_err(|e| EngineError::NotFound {
        what: format!("cannot connect to '{}': {}", rec.uri, e.message()),
    })?;
    Ok(Box::new(LibvirtCheck::new(conn, &rec.uri, &rec.domain)))
}

/// The engine's view of one domain: is it running, who else uses a base, and (when libvirt
/// does the work) the libvirt engine on a read-write connection of its own.
pub struct LibvirtCheck {
    conn: Connect,
    uri: String,
    domain: String,
    libvirt: OnceLock<Result<LibvirtImages, String>>,
}

impl LibvirtCheck {
    pub fn new(conn: Connect, uri: &str, domain: &str) -> LibvirtCheck {
        LibvirtCheck {
            conn,
            uri: uri.to_string(),
            domain: domain.to_string(),
            libvirt: OnceLock::new(),
        }
    }

    pub fn connection(&self) -> &Connect {
        &self.conn
    }

    fn libvirt_images(&self) -> Result<&LibvirtImages, EngineError> {
        self.libvirt
            .get_or_init(|| {
                let conn = super::open(&self.uri, false).map_err(|e| {
                    format!(
                        "the libvirt engine needs a read-write connection to {}: {}",
                        self.uri,
                        e.message()
                    )
                })?;
                Ok(LibvirtImages::new(conn, &self.uri, &self.domain))
            })
            .as_ref()
            .map_err(|what| EngineError::NotFound { what: what.clone() })
    }
}

impl DomainCheck for LibvirtCheck {
    fn ensure_inactive(&self) -> Result<(), EngineError> {
        let dom =
            self.conn
                .lookup_domain_by_name(&self.domain)
                .map_err(|e| EngineError::NotFound {
                    what: format!("domain '{}': {}", self.domain, e.message()),
                })?;
        let st = state(&dom).map_err(|e| EngineError::NotFound {
            what: format!("state of '{}': {}", self.domain, e.message()),
        })?;
        if st.kind.is_active() {
            return Err(EngineError::DomainActive {
                domain: self.domain.clone(),
                state: format!("{} ({})", st.kind.word(), st.reason_word()),
            });
        }
        Ok(())
    }

    fn other_users(&self, base: &Path, overlay: &Path) -> Result<Vec<String>, EngineError> {
        let domains = self
            .conn
            .list_all_domains(0)
            .map_err(|e| EngineError::NotFound {
                what: format!("listing domains: {}", e.message()),
            })?;
        // A remote host's paths name its files, not ours: compare them as written, and ask
        // libvirtd (never this machine) what backs an image.
        let local = is_local_uri(&self.uri);
        let same = |a: &Path, b: &Path| {
            if local {
                image::same_path(a, b)
            } else {
                a == b
            }
        };
        let mut users = Vec::new();
        for dom in domains {
            let (Ok(name), Ok(xml)) = (dom.name(), dom.xml_desc(0)) else {
                continue;
            };
            for disk in parse_disks(&xml).unwrap_or_default() {
                let Some(src) = disk.source.filter(|_| disk.kind == "file") else {
                    continue;
                };
                let src = Path::new(&src);
                if same(src, overlay) {
                    continue;
                }
                let uses_base = same(src, base)
                    || match local.then(|| image::backing_chain(src)) {
                        Some(Ok(chain)) => chain
                            .iter()
                            .skip(1)
                            .any(|l| image::same_file(Path::new(&l.filename), base)),
                        // Remote, or not readable here: libvirtd reads the backing file.
                        _ => self
                            .libvirt_images()
                            .ok()
                            .and_then(|lv| lv.backing_of(src))
                            .is_some_and(|b| b == base),
                    };
                if uses_base {
                    users.push(format!("domain {name} ({})", disk.target));
                }
            }
        }
        Ok(users)
    }

    fn images(&self, kind: EngineKind) -> Result<&dyn Images, EngineError> {
        match kind {
            EngineKind::QemuImg => Ok(&QemuImg),
            EngineKind::Libvirt => Ok(self.libvirt_images()?),
        }
    }
}
