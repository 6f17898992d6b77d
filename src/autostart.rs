//! *Start at login*: an XDG autostart entry written by the app on the host; inside Flatpak,
//! where `~/.config/autostart` is out of reach, a request to the Background portal (ashpd),
//! which writes the entry for the sandboxed app after asking the user.

use crate::i18n::tr;
use crate::settings;

/// Whether this process runs in a Flatpak sandbox.
pub fn in_flatpak() -> bool {
    std::path::Path::new("/.flatpak-info").exists()
}

/// Whether the app is set to start at login, as far as it can know.
pub fn enabled() -> bool {
    if in_flatpak() {
        settings::portal_autostart_remembered()
    } else {
        settings::autostart_enabled()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AutostartError {
    #[error(transparent)]
    Settings(#[from] settings::SettingsError),
    #[error("the Background portal: {0}")]
    Portal(#[from] ashpd::Error),
}

/// Turns start at login on or off; returns the state it is in afterwards.
pub async fn set(enable: bool, uris: &[String]) -> Result<bool, AutostartError> {
    if !in_flatpak() {
        settings::set_autostart(enable, uris)?;
        return Ok(settings::autostart_enabled());
    }
    let response = ashpd::desktop::background::Background::request()
        .reason(tr("Ask about a VM's changes as soon as it shuts down").as_str())
        .auto_start(enable)
        .command(settings::autostart_command(uris))
        .dbus_activatable(false)
        .send()
        .await
        .and_then(|request| request.response())?;
    let granted = response.auto_start();
    settings::remember_portal_autostart(granted)?;
    Ok(granted)
}
