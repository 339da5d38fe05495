//! Build script for `apple-silicon`: links the Swift `coreml-bridge` when asked to.
//!
//! | build | what happens |
//! |---|---|
//! | no `coreml` feature (the default, any OS) | nothing: no Swift toolchain needed |
//! | `coreml` on macOS | `swift build -c release` of `coreml-bridge/` into `OUT_DIR`, then link `libCoreMLBridge.a` statically, plus `-framework CoreML -framework Foundation`, the Swift runtime search paths and an rpath to `/usr/lib/swift` (not run here: no macOS on our machines) |
//! | `coreml` on macOS with `COREML_BRIDGE_LIB_DIR` | link the prebuilt `libCoreMLBridge.a` from there instead of building |
//! | `coreml` on Linux with `COREML_BRIDGE_LIB_DIR` | the test path: link the Linux build of the bridge and the Swift runtime (`COREML_BRIDGE_SWIFT_LIB_DIR`, default `/usr/libexec/swift/lib/swift/linux`); see `scripts/swift/rust-ffi-test.sh` |
//! | `coreml` anywhere else | a documented no-op with a warning: no bridge is linked, so `CoreMlEngine` answers `Unavailable` |
//! | `coreml` under docs.rs (`DOCS_RS` set) | nothing is built or linked; `cfg(coreml_bridge)` is set so the docs show the bridge-backed code (rustdoc never links) |
//!
//! When it links the bridge it sets `cfg(coreml_bridge)`. Without it the
//! crate's `core_ml_bridge::ffi` functions are stubs that return
//! `COREML_ERR_UNAVAILABLE`.
//!
//! Why the last row is a no-op and not an error: `cargo build --all-features`
//! or `cargo clippy --all-features` on a Linux CI machine should work, and an
//! engine that answers `Unavailable` is exactly what the bridge itself
//! answers on Linux. The warning says so at build time, and the error says so
//! at run time.
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Swift runtime libraries the Linux build of the bridge needs
/// (coreml-bridge/README.md, "Linking on Linux").
const LINUX_SWIFT_LIBS: &[&str] = &[
    "swiftCore",
    "swift_Concurrency",
    "swiftDispatch",
    "dispatch",
    "BlocksRuntime",
    "Foundation",
    "FoundationEssentials",
];
const LINUX_SWIFT_LIB_DIR: &str = "/usr/libexec/swift/lib/swift/linux";
/// The lowest macOS the bridge supports (Package.swift: `.macOS(.v13)`).
const MIN_MACOS: (u32, u32) = (13, 0);

fn main() {
    println!("cargo::rustc-check-cfg=cfg(coreml_bridge)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=COREML_BRIDGE_LIB_DIR");
    println!("cargo::rerun-if-env-changed=DOCS_RS");
    if env::var_os("CARGO_FEATURE_COREML").is_none() {
        return;
    }
    // docs.rs has no Swift toolchain and only runs rustdoc, which links nothing.
    if env::var_os("DOCS_RS").is_some() {
        println!("cargo::rustc-cfg=coreml_bridge");
        return;
    }
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let lib_dir = env::var_os("COREML_BRIDGE_LIB_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    match (target_os.as_str(), lib_dir) {
        ("macos", lib_dir) => macos(lib_dir),
        ("linux", Some(lib_dir)) => linux(&lib_dir),
        (os, _) => println!(
            "cargo::warning=feature `coreml` on {os}: no Core ML bridge is linked (Core ML exists only on Apple \
             platforms), so CoreMlEngine answers Unavailable. For the Linux bridge test path set \
             COREML_BRIDGE_LIB_DIR (see scripts/swift/rust-ffi-test.sh)."
        ),
    }
}

fn fail(msg: &str) -> ! {
    // A build script reports a fatal error by panicking; keep it one clear line.
    panic!("\n\napple-silicon build.rs: {msg}\n\n");
}

fn require_archive(lib_dir: &Path) -> PathBuf {
    let archive = lib_dir.join("libCoreMLBridge.a");
    if !archive.is_file() {
        fail(&format!(
            "COREML_BRIDGE_LIB_DIR={} holds no libCoreMLBridge.a (build it with `swift build -c release \
             --package-path coreml-bridge` and point COREML_BRIDGE_LIB_DIR at `swift build -c release \
             --show-bin-path`)",
            lib_dir.display()
        ));
    }
    // Relink whenever the archive is rebuilt.
    println!("cargo::rerun-if-changed={}", archive.display());
    archive
}

/// Linux: the explicit test path (Swift 6.0.3 in the Debian trixie chroot).
fn linux(lib_dir: &Path) {
    println!("cargo::rerun-if-env-changed=COREML_BRIDGE_SWIFT_LIB_DIR");
    require_archive(lib_dir);
    let swift = env::var_os("COREML_BRIDGE_SWIFT_LIB_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(LINUX_SWIFT_LIB_DIR));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let swiftrt = swift.join(&arch).join("swiftrt.o");
    let mut missing: Vec<String> = LINUX_SWIFT_LIBS
        .iter()
        .map(|l| swift.join(format!("lib{l}.so")))
        .chain([swiftrt.clone()])
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    missing.sort();
    if !missing.is_empty() {
        fail(&format!(
            "the Swift runtime is incomplete at {} (set COREML_BRIDGE_SWIFT_LIB_DIR); missing: {}. The Linux \
             bridge links only inside the Swift chroot: run scripts/swift/rust-ffi-test.sh",
            swift.display(),
            missing.join(", ")
        ));
    }
    println!("cargo::rustc-link-search=native={}", lib_dir.display());
    println!("cargo::rustc-link-lib=static=CoreMLBridge");
    println!("cargo::rustc-link-search=native={}", swift.display());
    for lib in LINUX_SWIFT_LIBS {
        println!("cargo::rustc-link-lib=dylib={lib}");
    }
    // Needed only by a debug build of the archive; --as-needed drops it otherwise.
    if swift.join("libswiftSwiftOnoneSupport.so").exists() {
        println!("cargo::rustc-link-lib=dylib=swiftSwiftOnoneSupport");
    }
    // swiftrt.o registers the image's Swift metadata sections (the Swift
    // driver links it into every ELF image). Link args reach this package's
    // tests, binaries and examples only: the Linux path is a test path.
    println!("cargo::rustc-link-arg={}", swiftrt.display());
    println!("cargo::rustc-link-arg=-Wl,-rpath,{}", swift.display());
    println!("cargo::rustc-cfg=coreml_bridge");
}

/// Parses `13`, `13.0`, `14.4.1` into (major, minor).
fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut it = v.trim().split('.');
    let major = it.next()?.parse().ok()?;
    let minor = match it.next() {
        Some(m) => m.parse().ok()?,
        None => 0,
    };
    Some((major, minor))
}

/// macOS: the production path. NOT RUN HERE (no macOS on our machines).
fn macos(prebuilt: Option<PathBuf>) {
    println!("cargo::rerun-if-env-changed=MACOSX_DEPLOYMENT_TARGET");
    let deployment = env::var("MACOSX_DEPLOYMENT_TARGET").ok().filter(|v| !v.is_empty());
    let target = deployment
        .clone()
        .unwrap_or_else(|| format!("{}.{}", MIN_MACOS.0, MIN_MACOS.1));
    match parse_version(&target) {
        Some(v) if v >= MIN_MACOS => {}
        _ => fail(&format!(
            "MACOSX_DEPLOYMENT_TARGET={target}: coreml-bridge needs macOS {}.{} or later",
            MIN_MACOS.0, MIN_MACOS.1
        )),
    }
    if deployment.is_none() {
        println!(
            "cargo::warning=MACOSX_DEPLOYMENT_TARGET is unset: the bridge is built for {target}; export \
             MACOSX_DEPLOYMENT_TARGET={target} for the whole cargo run so rustc links for the same macOS"
        );
    }

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let package = manifest_dir.join("coreml-bridge");
    for p in ["Package.swift", "Sources", "include"] {
        println!("cargo::rerun-if-changed={}", package.join(p).display());
    }

    let lib_dir = match prebuilt {
        Some(dir) => {
            require_archive(&dir);
            dir
        }
        None => {
            let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("swift-build");
            let swift = |extra: &[&str]| {
                let mut cmd = Command::new("swift");
                cmd.arg("build")
                    .arg("-c")
                    .arg("release")
                    .arg("--package-path")
                    .arg(&package)
                    .arg("--scratch-path")
                    .arg(&out)
                    .args(extra)
                    .env("MACOSX_DEPLOYMENT_TARGET", &target);
                cmd
            };
            let status = swift(&["--product", "CoreMLBridge"]).status().unwrap_or_else(|e| {
                fail(&format!(
                    "running `swift build` (is Xcode or the Swift toolchain installed?): {e}"
                ))
            });
            if !status.success() {
                fail(&format!(
                    "`swift build -c release --package-path {}` failed",
                    package.display()
                ));
            }
            let bin = swift(&["--show-bin-path"])
                .output()
                .unwrap_or_else(|e| fail(&format!("running `swift build --show-bin-path`: {e}")));
            let dir = PathBuf::from(String::from_utf8_lossy(&bin.stdout).trim());
            require_archive(&dir);
            dir
        }
    };

    println!("cargo::rustc-link-search=native={}", lib_dir.display());
    println!("cargo::rustc-link-lib=static=CoreMLBridge");
    println!("cargo::rustc-link-lib=framework=CoreML");
    println!("cargo::rustc-link-lib=framework=Foundation");
    // The Swift runtime: search paths as the toolchain reports them (the
    // OS's /usr/lib/swift, resolved in the SDK, and the toolchain's
    // compatibility libraries), falling back to /usr/lib/swift.
    let mut paths = swift_runtime_paths().unwrap_or_default();
    if !paths.iter().any(|p| p == "/usr/lib/swift") {
        paths.push("/usr/lib/swift".to_string());
    }
    for p in &paths {
        println!("cargo::rustc-link-search=native={p}");
    }
    // With a deployment target of 12+ the OS runtime is found without it; an
    // rpath costs nothing and covers older binaries built from this package.
    println!("cargo::rustc-link-arg=-Wl,-rpath,/usr/lib/swift");
    println!("cargo::rustc-cfg=coreml_bridge");
}

/// `paths.runtimeLibraryPaths` from `swift -print-target-info` (a small JSON
/// read by hand so the build script needs no dependencies).
fn swift_runtime_paths() -> Option<Vec<String>> {
    let out = Command::new("swift").arg("-print-target-info").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let start = text.find("\"runtimeLibraryPaths\"")?;
    let rest = &text[start..];
    let open = rest.find('[')?;
    let close = rest.find(']')?;
    Some(
        rest[open + 1..close]
            .split('"')
            .skip(1)
            .step_by(2)
            .map(|s| s.replace("\\/", "/"))
            .filter(|s| !s.is_empty())
            .collect(),
    )
}
