//! Manual pages and shell completions generated from the CLI's definitions: a page per verb that
//! `man -l` renders with its synopsis and options, and completion scripts that know every verb.

use std::process::Command;

use tests::daemon::binary;

const VERBS: [&str; 16] = [
    "run", "block", "unblock", "allow", "disallow", "list", "stats", "top", "status", "policy", "reload", "confirm",
    "fleet", "roles", "detach", "explain",
];

/// `man`'s output as words separated by single spaces, without overstrike (bold and underline as `X\bX`, `_\bX` when not on a tty).
fn plain(out: &[u8]) -> String {
    let mut text: Vec<char> = Vec::new();
    for c in String::from_utf8_lossy(out).chars() {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    // Justified lines have runs of blanks: one space each.
    text.into_iter().collect::<String>().split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn a_manual_page_per_verb_renders() {
    let dir = std::env::temp_dir().join(format!("vwman-{}", std::process::id()));
    let out = Command::new(binary()).arg("manpages").arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut pages = vec!["voipwall".to_string()];
    pages.extend(VERBS.iter().map(|v| format!("voipwall-{v}")));
    pages.extend(["voipwall-policy-check", "voipwall-policy-show", "voipwall-fleet-status"].map(String::from));
    for page in &pages {
        let file = dir.join(format!("{page}.8"));
        let man = Command::new("man").arg("-l").arg(&file).env("MANWIDTH", "100").output();
        let man = man.expect("man (Debian man-db)");
        let text = plain(&man.stdout);
        assert!(man.status.success(), "man -l {}: {}", file.display(), String::from_utf8_lossy(&man.stderr));
        let typed = page.replace('-', " ");
        assert!(text.contains("NAME") && text.contains("SYNOPSIS"), "{page}:\n{text}");
        assert!(text.contains(&typed), "{page} shows how it is typed ({typed}):\n{text}");
    }
    let detach = plain(
        &Command::new("man")
            .arg("-l")
            .arg(dir.join("voipwall-detach.8"))
            .env("MANWIDTH", "100")
            .output()
            .unwrap()
            .stdout,
    );
    for option in ["--purge", "--stop", "--pin-dir", "--state-dir"] {
        assert!(detach.contains(option), "voipwall-detach(8) documents {option}:\n{detach}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn completion_scripts_know_every_verb() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(binary()).args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
        let script = String::from_utf8_lossy(&out.stdout);
        for verb in VERBS {
            assert!(script.contains(verb), "the {shell} completion knows {verb}");
        }
        if shell == "bash" {
            let file = std::env::temp_dir().join(format!("vwcomp-{}.bash", std::process::id()));
            std::fs::write(&file, script.as_bytes()).unwrap();
            let st = Command::new("bash").arg("-n").arg(&file).status().unwrap();
            let _ = std::fs::remove_file(&file);
            assert!(st.success(), "bash -n accepts the completion script");
        }
    }
    let bad = Command::new(binary()).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "an unknown shell is a usage error");
}
