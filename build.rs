//! Build script for `apple-silicon`.
//!
//! For now this is deliberately a no-op: the Swift `coreml-bridge` is built and
//! linked here only on macOS with the `coreml` feature, which lands with the
//! bridge itself. On every other host nothing Swift-related happens, so a plain
//! `cargo build` needs no Swift toolchain.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
