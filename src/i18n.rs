//! Translations (gettext domain `vmoverlay`). Strings are marked with `tr` / `tr_f`; named
//! placeholders (`{vm}`) keep word order free for translators.

use crate::config;

/// Binds the text domain. `VMOVERLAY_LOCALEDIR` overrides the build-time directory (tests,
/// running from a build tree).
pub fn init() {
    use gettextrs::{
        bind_textdomain_codeset, bindtextdomain, setlocale, textdomain, LocaleCategory,
    };
    setlocale(LocaleCategory::LcAll, "");
    let dir =
        std::env::var("VMOVERLAY_LOCALEDIR").unwrap_or_else(|_| config::LOCALEDIR.to_string());
    let _ = bindtextdomain(config::GETTEXT_PACKAGE, dir);
    let _ = bind_textdomain_codeset(config::GETTEXT_PACKAGE, "UTF-8");
    let _ = textdomain(config::GETTEXT_PACKAGE);
}

/// The translation of `msgid`.
pub fn tr(msgid: &str) -> String {
    gettextrs::gettext(msgid)
}

/// The translation of `msgid`, with each `{name}` replaced by its value.
pub fn tr_f(msgid: &str, args: &[(&str, &str)]) -> String {
    let mut s = gettextrs::gettext(msgid);
    for (name, value) in args {
        s = s.replace(&format!("{{{name}}}"), value);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::tr_f;

    #[test]
    fn placeholders_are_filled() {
        assert_eq!(
            tr_f("{vm} has shut down", &[("vm", "tiny")]),
            "tiny has shut down"
        );
    }
}
