//! Translations: POTFILES.in is complete, every language in LINGUAS translates every message
//! of a freshly extracted template, and the program really speaks them.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::manifest_dir;

/// The Rust sources and the GtkBuilder files (`.ui`) under `dir`.
fn source_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            source_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs" || x == "ui") {
            out.push(p);
        }
    }
}

fn potfiles() -> BTreeSet<String> {
    std::fs::read_to_string(manifest_dir().join("po/POTFILES.in"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn linguas() -> Vec<String> {
    std::fs::read_to_string(manifest_dir().join("po/LINGUAS"))
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Does the source call `tr(` or `tr_f(` (as a whole word, not `attr(`, and not the
/// definitions in i18n.rs)? A GtkBuilder file marks its strings `translatable="yes"`.
fn marks_strings(path: &Path, text: &str) -> bool {
    if path.extension().is_some_and(|x| x == "ui") {
        return text.contains("translatable=\"yes\"");
    }
    ["tr(", "tr_f("].iter().any(|call| {
        text.match_indices(call).any(|(i, _)| {
            let before = text[..i].chars().next_back();
            let word_start = !before.is_some_and(|c| c.is_alphanumeric() || c == '_');
            let is_definition = text[..i].ends_with("fn ");
            word_start && !is_definition
        })
    })
}

#[test]
fn potfiles_lists_every_source_file_with_translatable_strings() {
    let root = manifest_dir();
    let mut files = Vec::new();
    source_files(&root.join("src"), &mut files);
    let marked: BTreeSet<String> = files
        .into_iter()
        .filter(|p| marks_strings(p, &std::fs::read_to_string(p).unwrap()))
        .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    let listed = potfiles();
    let (sources, data): (BTreeSet<String>, BTreeSet<String>) =
        listed.into_iter().partition(|f| f.starts_with("src/"));
    assert_eq!(
        sources, marked,
        "po/POTFILES.in must list exactly the files with tr()/tr_f() or translatable=\"yes\""
    );
    // And every desktop file and the metainfo, whose texts are translated too.
    let translatable_data: BTreeSet<String> = std::fs::read_dir(root.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".desktop.in") || n.ends_with(".metainfo.xml.in"))
        .map(|n| format!("data/{n}"))
        .collect();
    assert_eq!(data, translatable_data);
}

#[test]
fn the_desktop_files_and_the_metainfo_are_translated() {
    let tmp = tempfile::tempdir().unwrap();
    let root = manifest_dir();
    for f in potfiles().iter().filter(|f| f.starts_with("data/")) {
        let (kind, out) = if f.ends_with(".desktop.in") {
            ("--desktop", tmp.path().join("out.desktop"))
        } else {
            ("--xml", tmp.path().join("out.xml"))
        };
        let st = Command::new("msgfmt")
            .arg(kind)
            .arg("--template")
            .arg(root.join(f))
            .arg("-d")
            .arg(root.join("po"))
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success(), "msgfmt {kind} {f}");
        let text = std::fs::read_to_string(&out).unwrap();
        for lang in linguas() {
            if kind == "--desktop" {
                for key in ["Name", "Comment"] {
                    assert!(
                        text.contains(&format!("{key}[{lang}]=")),
                        "{f}: no {key}[{lang}]"
                    );
                }
            } else {
                assert!(
                    text.contains(&format!("<summary xml:lang=\"{lang}\">")),
                    "{f}: no summary in {lang}"
                );
                assert!(
                    text.contains(&format!("<p xml:lang=\"{lang}\">")),
                    "{f}: no description in {lang}"
                );
            }
        }
    }
}

fn fresh_template(dir: &Path) -> std::path::PathBuf {
    let pot = dir.join("vmoverlay.pot");
    let out = Command::new("xgettext")
        // No --language: desktop files and the metainfo are read by their kind, Rust as C.
        .args(["--from-code=UTF-8", "--keyword=tr", "--keyword=tr_f", "-o"])
        .arg(&pot)
        .args(potfiles())
        .current_dir(manifest_dir())
        .output()
        .expect("xgettext (gettext) is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pot
}

#[test]
fn every_language_translates_every_message() {
    let tmp = tempfile::tempdir().unwrap();
    let pot = fresh_template(tmp.path());
    let langs = linguas();
    assert!(langs.contains(&"ru".to_string()) && langs.contains(&"zh_CN".to_string()));
    for lang in langs {
        let po = manifest_dir().join(format!("po/{lang}.po"));
        let stats = Command::new("msgfmt")
            .args(["--check", "--statistics", "-o", "/dev/null"])
            .arg(&po)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&stats.stderr);
        assert!(stats.status.success(), "{lang}: {text}");
        assert!(
            !text.contains("untranslated") && !text.contains("fuzzy"),
            "{lang}: {text}"
        );
        // Every message of the current sources is in the catalogue.
        let cmp = Command::new("msgcmp").arg(&po).arg(&pot).output().unwrap();
        assert!(
            cmp.status.success(),
            "{lang} is missing messages: {}",
            String::from_utf8_lossy(&cmp.stderr)
        );
    }
}

#[test]
fn the_program_speaks_russian_and_chinese() {
    let tmp = tempfile::tempdir().unwrap();
    for lang in linguas() {
        let dir = tmp.path().join(&lang).join("LC_MESSAGES");
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("msgfmt")
            .arg("-o")
            .arg(dir.join("vmoverlay.mo"))
            .arg(manifest_dir().join(format!("po/{lang}.po")))
            .status()
            .unwrap();
        assert!(st.success());
    }
    let uri = "qemu:///system?socket=/nonexistent/vmoverlay/libvirt-sock";
    for (lang, expected) in [
        ("ru", "не удалось подключиться к «"),
        ("zh_CN", "无法连接到“"),
    ] {
        let out = Command::new(common::bin())
            .args(["status", "--connect", uri])
            .env("LANGUAGE", lang)
            .env("LANG", "C.UTF-8")
            .env_remove("LC_ALL")
            .env("VMOVERLAY_LOCALEDIR", tmp.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2));
        assert!(err.contains(expected), "{lang}: {err}");
    }
}

/// The strings a GtkBuilder file marks `translatable="yes"` (plain text only: the .ui files
/// use no entities in them).
fn ui_literals(text: &str) -> Vec<String> {
    text.split("translatable=\"yes\"")
        .skip(1)
        .filter_map(|rest| {
            let body = &rest[rest.find('>')? + 1..];
            Some(body[..body.find('<')?].to_string())
        })
        .collect()
}

/// The string literals passed to `tr(…)` / `tr_f(…)` in a source file, as written (escapes
/// kept, which is also how a .pot file writes them).
fn marked_literals(text: &str) -> Vec<String> {
    // Comments are not extracted, and need not be.
    let text: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let text = text.as_str();
    let mut out = Vec::new();
    for call in ["tr(", "tr_f("] {
        for (i, _) in text.match_indices(call) {
            let before = text[..i].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') || text[..i].ends_with("fn ")
            {
                continue;
            }
            let rest = text[i + call.len()..].trim_start();
            let Some(body) = rest.strip_prefix('"') else {
                continue; // a variable, as in the definitions
            };
            let mut lit = String::new();
            let mut chars = body.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        lit.push('\\');
                        lit.extend(chars.next());
                    }
                    '"' => break,
                    c => lit.push(c),
                }
            }
            out.push(lit);
        }
    }
    out
}

#[test]
fn every_marked_string_is_extracted() {
    // xgettext reads Rust as C: a string it cannot see (inside a `#[…]` line, after a
    // lifetime it takes for a character constant) would silently stay untranslated.
    let tmp = tempfile::tempdir().unwrap();
    let pot = std::fs::read_to_string(fresh_template(tmp.path())).unwrap();
    let mut msgids = BTreeSet::new();
    for block in pot.split("\n\n") {
        let mut id = String::new();
        let mut in_id = false;
        for line in block.lines() {
            if let Some(rest) = line.strip_prefix("msgid ") {
                in_id = true;
                id.push_str(rest.trim_matches('"'));
            } else if in_id && line.starts_with('"') {
                id.push_str(line.trim_matches('"'));
            } else {
                in_id = false;
            }
        }
        msgids.insert(id);
    }
    let mut missing = Vec::new();
    for file in potfiles() {
        let text = std::fs::read_to_string(manifest_dir().join(&file)).unwrap();
        let lits = if file.ends_with(".ui") {
            ui_literals(&text)
        } else {
            marked_literals(&text)
        };
        for lit in lits {
            if !msgids.contains(&lit) {
                missing.push(format!("{file}: {lit}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not extracted by xgettext: {missing:#?}"
    );
}
