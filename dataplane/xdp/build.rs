//! Builds the XDP program (dataplane/ebpf) with the nightly toolchain for
//! bpfel-unknown-none, as part of the normal cargo build, and hands its path to the
//! crate as `VIPR_EBPF_OBJECT`. scripts/setup.sh installs nightly, rust-src and
//! bpf-linker.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let ebpf_dir = manifest_dir.join("../ebpf").canonicalize().expect("dataplane/ebpf exists");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let target_dir = out_dir.join("ebpf-target");

    println!("cargo:rerun-if-changed={}", ebpf_dir.join("src").display());
    println!("cargo:rerun-if-changed={}", ebpf_dir.join("Cargo.toml").display());
    println!("cargo:rerun-if-changed={}", ebpf_dir.join("Cargo.lock").display());
    println!("cargo:rerun-if-changed={}", ebpf_dir.join(".cargo").display());
    println!("cargo:rerun-if-changed={}", ebpf_dir.join("../abi/src").display());

    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release", "--locked", "-Z", "build-std=core"])
        .args(["--target", "bpfel-unknown-none", "--target-dir"])
        .arg(&target_dir)
        .current_dir(&ebpf_dir);
    // The outer (stable) cargo's settings must not leak into the nightly build.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("CARGO")
            || key.starts_with("RUSTC")
            || key == "RUSTUP_TOOLCHAIN"
            || key == "RUSTFLAGS"
        {
            cmd.env_remove(&key);
        }
    }
    let status = cmd.status().expect("running `rustup run nightly cargo build` for dataplane/ebpf");
    assert!(
        status.success(),
        "building the XDP program failed; run scripts/setup.sh (nightly, rust-src, bpf-linker)"
    );
    let object = target_dir.join("bpfel-unknown-none/release/vipr-ebpf");
    println!("cargo:rustc-env=VIPR_EBPF_OBJECT={}", object.display());
}
