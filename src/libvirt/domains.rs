//! Domain lookups the engine and the CLI need, over libvirt's safe API.

use std::path::Path;

use virt::connect::Connect;
use virt::domain::Domain;

use super::events::DomainState;
use super::ffi;
use crate::overlay::chain::parse_disks;
use crate::overlay::{image, DomainCheck, DomainDisks, EngineError, Record};

pub fn state(dom: &Domain) -> Result<DomainState, virt::error::Error> {
    let (s, r) = ffi::domain_state(dom)?;
    Ok(DomainState::from_raw(s, r))
}

/// A domain's disks as the engine sees them: its current definition, with the user's pins.
pub fn domain_disks(conn: &Connect, name: &str) -> Result<DomainDisks, String> {
    let xml = conn
        .lookup_domain_by_name(name)
        .and_then(|d| d.xml_desc(0))
        .map_err(|e| e.message().to_string())?;
    let pins = crate::settings::pins_for(name)?;
    crate::overlay::discover(&xml, &pins)
}

/// The check for the domain a journal record names, over a new read-only connection to the
/// record's URI (how interrupted operations are resumed).
pub fn check_for_record(rec: &Record) -> Result<Box<dyn DomainCheck>, EngineError> {
    let conn = super::open(&rec.uri, true).map_err(|e| EngineError::NotFound {
        what: format!("cannot connect to '{}': {}", rec.uri, e.message()),
    })?;
    Ok(Box::new(LibvirtCheck::new(conn, &rec.domain)))
}

/// The engine's view of one domain: is it running, and who else uses a base.
pub struct LibvirtCheck {
    conn: Connect,
    domain: String,
}

impl LibvirtCheck {
    pub fn new(conn: Connect, domain: &str) -> LibvirtCheck {
        LibvirtCheck {
            conn,
            domain: domain.to_string(),
        }
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
                if image::same_file(src, overlay) {
                    continue;
                }
                let uses_base = image::same_file(src, base)
                    || image::backing_chain(src).is_ok_and(|chain| {
                        chain
                            .iter()
                            .skip(1)
                            .any(|l| image::same_file(Path::new(&l.filename), base))
                    });
                if uses_base {
                    users.push(format!("domain {name} ({})", disk.target));
                }
            }
        }
        Ok(users)
    }
}
