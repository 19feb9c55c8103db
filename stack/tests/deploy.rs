//! The systemd units in deploy/systemd/ only use flags the binaries accept,
//! and every one makes the files its service creates private (UMask=0077).

use std::path::PathBuf;

fn release_dir() -> PathBuf {
    // target/release/deps/<test> -> target/release
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

#[test]
fn systemd_units_use_existing_flags() {
    let dir = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../deploy/systemd");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "service") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap().replace("\\\n", " ");
        // Files a service creates hold secrets or unredacted records.
        assert!(
            text.lines().any(|l| l.trim() == "UMask=0077"),
            "{} does not set UMask=0077",
            path.display()
        );
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{} has no ExecStart", path.display()));
        let mut words = exec.split_whitespace();
        let bin = words
            .next()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_string();
        let exe = release_dir().join(&bin);
        if !exe.exists() {
            eprintln!(
                "SKIPPED {}: {} is not built (cargo build --release --bins)",
                path.display(),
                exe.display()
            );
            continue;
        }
        let help = std::process::Command::new(&exe)
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        for flag in words.filter(|w| w.starts_with("--")) {
            assert!(
                help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                "{}: {bin} has no flag {flag}",
                path.display()
            );
            checked += 1;
        }
    }
    eprintln!("{checked} flags checked");
}
