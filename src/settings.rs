//! Per-user settings under the XDG config directory.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::overlay::Pin;

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
pub fn pins_for(vm: &str) -> Result<Vec<Pin>, String> {
    let path = config_dir().join("pins.json");
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let all: BTreeMap<String, Vec<Pin>> =
        serde_json::from_slice(&data).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(all.get(vm).cloned().unwrap_or_default())
}
