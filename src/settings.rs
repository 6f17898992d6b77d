//! Per-user settings under the XDG config directory.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::machine::{Policy, VmKey};
use crate::overlay::Pin;

/// A settings file that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct SettingsError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn err(path: &std::path::Path, source: impl Into<std::io::Error>) -> SettingsError {
    SettingsError {
        path: path.to_path_buf(),
        source: source.into(),
    }
}

/// `$VMOVERLAY_CONFIG_DIR`, else `$XDG_CONFIG_HOME/vmoverlay`, else `~/.config/vmoverlay`.
pub fn config_dir() -> PathBuf {
    std::env::var_os("VMOVERLAY_CONFIG_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CONFIG_HOME")
                .filter(|v| !v.is_empty())
                .map(|v| PathBuf::from(v).join("vmoverlay"))
        })
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/vmoverlay")))
        .unwrap_or_else(|| PathBuf::from("/etc/vmoverlay"))
}

/// Per-VM pinned overlay/base pairs (`pins.json`: `{"VM": [{"overlay": …, "base": …}]}`),
/// the setting form of the old `vmoverlay VM --overlay PATH --base PATH`.
pub fn pins_for(vm: &str) -> Result<Vec<Pin>, SettingsError> {
    let path = config_dir().join("pins.json");
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err(&path, e)),
    };
    let all: BTreeMap<String, Vec<Pin>> =
        serde_json::from_slice(&data).map_err(|e| err(&path, e))?;
    Ok(all.get(vm).cloned().unwrap_or_default())
}

/// Directories where images nobody registered with libvirt may live (`scan-dirs.json`: a
/// JSON array of paths): an overlay there on a base makes a commit into that base refuse.
pub fn scan_dirs() -> Result<Vec<PathBuf>, SettingsError> {
    let path = config_dir().join("scan-dirs.json");
    match std::fs::read(&path) {
        Ok(d) => serde_json::from_slice(&d).map_err(|e| err(&path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(err(&path, e)),
    }
}

/// Per-VM policies (`policies.json`: `{"URI": {"VM": "always-commit"}}`).
pub fn load_policies() -> std::collections::BTreeMap<VmKey, Policy> {
    let path = config_dir().join("policies.json");
    let Ok(data) = std::fs::read(&path) else {
        return Default::default();
    };
    let by_uri: BTreeMap<String, BTreeMap<String, Policy>> = match serde_json::from_slice(&data) {
        Ok(v) => v,
        Err(e) => {
            log::warn!("ignoring {}: {e}", path.display());
            return Default::default();
        }
    };
    by_uri
        .into_iter()
        .flat_map(|(uri, vms)| {
            vms.into_iter()
                .map(move |(name, p)| (VmKey::new(&uri, &name), p))
        })
        .collect()
}

/// Remembers one VM's policy (written atomically).
pub fn save_policy(key: &VmKey, policy: Policy) -> Result<(), SettingsError> {
    let dir = config_dir();
    let path = dir.join("policies.json");
    let mut by_uri: BTreeMap<String, BTreeMap<String, Policy>> = std::fs::read(&path)
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok())
        .unwrap_or_default();
    by_uri
        .entry(key.uri.clone())
        .or_default()
        .insert(key.name.clone(), policy);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&by_uri)?)?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| err(&path, e))
}

/// The XDG autostart entry that starts the app at login.
pub fn autostart_path() -> PathBuf {
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("/etc/xdg"));
    config_home
        .join("autostart")
        .join(format!("{}.desktop", crate::config::APP_ID))
}

pub fn autostart_enabled() -> bool {
    autostart_path().exists()
}

/// The command line that starts the app at login, watching `uris`.
pub fn autostart_command(uris: &[String]) -> Vec<String> {
    let mut cmd = vec!["vmoverlay".to_string()];
    for u in uris {
        cmd.push("--connect".into());
        cmd.push(u.clone());
    }
    cmd
}

/// Inside Flatpak the Background portal keeps the entry, and cannot be asked for it later:
/// the last answer is remembered here.
fn portal_autostart_path() -> PathBuf {
    config_dir().join("autostart-granted")
}

pub fn portal_autostart_remembered() -> bool {
    portal_autostart_path().exists()
}

pub fn remember_portal_autostart(enabled: bool) -> Result<(), SettingsError> {
    let path = portal_autostart_path();
    let done = if enabled {
        std::fs::create_dir_all(config_dir()).and_then(|_| std::fs::write(&path, "1\n"))
    } else {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    };
    done.map_err(|e| err(&path, e))
}

/// Writes or removes the autostart entry. `uris` are passed on to the started app.
pub fn set_autostart(enabled: bool, uris: &[String]) -> Result<(), SettingsError> {
    let path = autostart_path();
    if !enabled {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(err(&path, e)),
            _ => Ok(()),
        };
    }
    // Desktop-entry quoting: a URI is one argument inside double quotes, without the
    // characters that would need escaping (no URI needs them).
    let exec = autostart_command(uris)
        .iter()
        .map(|a| {
            if a.starts_with('-') || a == "vmoverlay" {
                a.clone()
            } else {
                format!("\"{}\"", a.replace(['"', '\\', '`', '$'], ""))
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let entry = format!(
        "[Desktop Entry]\nType=Application\nName=VM Overlay\n\
         Comment=Commit or discard a VM's overlay when it shuts down\n\
         Exec={exec}\nIcon={}\nTerminal=false\nX-GNOME-Autostart-enabled=true\n",
        crate::config::APP_ID
    );
    std::fs::create_dir_all(path.parent().unwrap_or(std::path::Path::new("/")))
        .and_then(|_| std::fs::write(&path, entry))
        .map_err(|e| err(&path, e))
}
