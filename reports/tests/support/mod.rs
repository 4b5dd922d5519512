//! What the report tests share: Debian tools installed when missing, and where test output goes.
#![allow(dead_code)] // each test file uses part of it

use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether `binary` (an absolute path) exists, installing Debian's `package` first when it does
/// not and we can (as root; `.ci/run` installs it beforehand). When it stays missing the caller
/// skips with a loud message — except on CI (`CI` set), where a missing tool fails the test.
pub(crate) fn debian_tool(binary: &str, package: &str) -> bool {
    if Path::new(binary).exists() {
        return true;
    }
    let _ = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    if Path::new(binary).exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{binary} is missing and could not be installed: apt-get install {package}"
    );
    eprintln!(
        "\n\n!!! SKIPPED: {binary} is missing and could not be installed (run as root, or \
         apt-get install {package})\n"
    );
    false
}

/// `target/test-output/<name>/`, emptied: files a person may want to look at after the tests
/// (a screenshot, the rendered report).
pub(crate) fn output_dir(name: &str) -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target>/tmp`; keep the output beside it, easy to find.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf);
    let dir = target.join("test-output").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The fixture's directory: `reports/tests/golden`.
pub(crate) fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}
