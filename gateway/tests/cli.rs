//! The binary itself: a bad configuration is one clear line and exit status 64.

use std::process::Command;

#[test]
fn bad_configuration_is_one_line_and_exit_64() {
    let out = Command::new(env!("CARGO_BIN_EXE_imgfetch-gateway"))
        .args(["--instance", "not.a.token"])
        .output()
        .expect("run imgfetch-gateway");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains("instance"), "{stderr}");
}
