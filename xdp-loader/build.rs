//! Builds the XDP program from C with `clang -target bpf`.
//!
//! Why C and clang rather than aya-bpf in Rust: the Rust BPF target needs a
//! nightly toolchain and bpf-linker, and this project pins stable 1.95. The
//! program is small, and Debian's clang and libbpf headers are one apt line.

use std::{env, path::PathBuf, process::Command};

fn main() {
    let source = PathBuf::from("bpf/rauta_xdp.c");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-env-changed=RAUTA_BPF_CLANG");

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out.join("rauta_xdp.o");
    let clang = env::var("RAUTA_BPF_CLANG").unwrap_or_else(|_| "clang".to_owned());
    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };

    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg(format!("-I/usr/include/{arch}"))
        .arg("-c")
        .arg(&source)
        .arg("-o")
        .arg(&object)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed to build {} ({s})", source.display()),
        Err(e) => panic!(
            "cannot run `{clang}` to build the XDP program ({e}); install clang and libbpf-dev \
             (scripts/setup does), or point RAUTA_BPF_CLANG at a clang"
        ),
    }
}
