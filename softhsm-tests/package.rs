//! The Debian package `ops/package.sh` builds: what it holds, that the unit runs the packaged
//! binary, that the man page and completions come from the command line itself, and that
//! SHA256SUMS checks. (Installing it is left to a real host: `dpkg -i`.)

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn the_package_holds_the_binary_unit_docs_man_page_and_completions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().expect("tempdir");
    let printed = run(Command::new(root.join("ops/package.sh"))
        .args(["--fast", "--bin", env!("CARGO_BIN_EXE_hsm-ca"), "--out"])
        .arg(out.path()));
    let deb = Path::new(printed.trim());
    assert!(deb.exists(), "{printed}");
    let name = deb.file_name().expect("name").to_string_lossy().to_string();
    assert!(
        name.starts_with(&format!("hsm-ca_{}_", env!("CARGO_PKG_VERSION"))),
        "{name}"
    );

    // Release artifacts come with their checksums, as the ceremony runbook expects.
    run(Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(out.path()));

    let listing = run(Command::new("dpkg-deb").arg("--contents").arg(deb));
    for path in [
        "./usr/bin/hsm-ca",
        "./lib/systemd/system/hsm-ca.service",
        "./usr/share/man/man1/hsm-ca.1.gz",
        "./usr/share/bash-completion/completions/hsm-ca",
        "./usr/share/zsh/vendor-completions/_hsm-ca",
        "./usr/share/fish/vendor_completions.d/hsm-ca.fish",
        "./usr/share/doc/hsm-ca/examples/softhsm.toml",
        "./usr/share/doc/hsm-ca/examples/postgres.toml",
        "./usr/share/doc/hsm-ca/copyright",
        "./etc/hsm-ca/",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(path)),
            "{path} is not in the package:\n{listing}"
        );
    }
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x root/root") && l.ends_with("./usr/bin/hsm-ca")),
        "the binary is root's and executable:\n{listing}"
    );

    let depends = run(Command::new("dpkg-deb")
        .arg("--field")
        .arg(deb)
        .arg("Depends"));
    assert!(depends.contains("libc6"), "{depends}");
    let info = run(Command::new("dpkg-deb").arg("--info").arg(deb));
    assert!(info.contains("postinst"), "{info}");

    let tree = tempfile::tempdir().expect("tempdir");
    run(Command::new("dpkg-deb")
        .arg("--extract")
        .arg(deb)
        .arg(tree.path()));
    let unit = std::fs::read_to_string(tree.path().join("lib/systemd/system/hsm-ca.service"))
        .expect("unit");
    assert!(
        unit.contains("ExecStart=/usr/bin/hsm-ca --config /etc/hsm-ca/hsm-ca.toml serve"),
        "{unit}"
    );
    assert!(unit.contains("User=hsm-ca"), "{unit}");
    let man = run(Command::new("zcat").arg(tree.path().join("usr/share/man/man1/hsm-ca.1.gz")));
    assert!(man.contains(".TH hsm-ca"), "not a man page:\n{man}");
    for command in ["serve", "ceremony", "intermediate", "audit", "request"] {
        assert!(
            man.contains(command),
            "the man page does not name {command}"
        );
    }
    let bash = std::fs::read_to_string(
        tree.path()
            .join("usr/share/bash-completion/completions/hsm-ca"),
    )
    .expect("bash completion");
    assert!(
        bash.contains("complete") && bash.contains("intermediate"),
        "{bash}"
    );
}
