//! Calls that need no model: the ABI version check, the runtime description and compiling a package.

use super::*;

/// A timeout in whole milliseconds for the C ABI: rounded up, at least 1 ms
/// (the bridge rejects 0), at most `i64::MAX` (the bridge clamps to 30 days).
pub fn timeout_ms(timeout: Duration) -> i64 {
    let ms = timeout.as_nanos().div_ceil(1_000_000).max(1);
    i64::try_from(ms).unwrap_or(i64::MAX)
}

pub(super) fn path_cstring(path: &Path, op: Operation, what: &str) -> std::result::Result<CString, BridgeError> {
    let bad = |reason: &str| {
        BridgeError::refused(
            Status::InvalidArgument,
            Error::invalid_artifact(path, format!("{what} {reason} (the {} needs a UTF-8 path)", op.name())),
        )
    };
    let s = path.to_str().ok_or_else(|| bad("is not valid UTF-8"))?;
    CString::new(s).map_err(|_| bad("contains a NUL byte"))
}

pub(super) fn ensure_linked() -> std::result::Result<(), BridgeError> {
    if is_linked() {
        Ok(())
    } else {
        Err(BridgeError::unavailable(NO_BRIDGE_REASON))
    }
}

/// Turns a status and its error slot into a result.
pub(super) fn check(
    code: i32,
    err: &mut BridgeString,
    op: Operation,
    subject: &str,
    timeout: Duration,
) -> std::result::Result<(), BridgeError> {
    let status = Status::from_code(code);
    let message = err.take();
    if status == Status::Ok {
        return Ok(());
    }
    let message = message.unwrap_or_else(|| "(the bridge gave no message)".to_string());
    Err(BridgeError::new(status, op, subject, message, timeout))
}

/// The ABI version of the linked library (`coreml_bridge_abi_version`), or 0
/// without a bridge. Costs one call.
pub fn abi_version() -> i32 {
    // SAFETY: no arguments; the function only returns a constant.
    unsafe { ffi::coreml_bridge_abi_version() }
}

/// Checks that the linked library speaks this mirror's ABI version. The
/// error names the expected and the found version. Costs one call.
pub fn check_abi() -> Result<()> {
    if !is_linked() {
        return Err(BridgeError::unavailable(NO_BRIDGE_REASON).into_error());
    }
    check_abi_version(abi_version())
}

/// Refuses a bridge whose ABI version `got` is not this mirror's
/// ([`ffi::COREML_BRIDGE_ABI_VERSION`]); the error names both. Pure.
pub fn check_abi_version(got: i32) -> Result<()> {
    if got != ffi::COREML_BRIDGE_ABI_VERSION {
        return Err(Error::internal(format!(
            "coreml-bridge ABI version: this crate speaks version {}, the linked library speaks version {got} \
             (rebuild the Swift library from this checkout)",
            ffi::COREML_BRIDGE_ABI_VERSION
        )));
    }
    Ok(())
}

/// What the process runs on, from `coreml_runtime_info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// The library's ABI version.
    pub bridge_abi_version: i32,
    /// `macOS`, `iOS`, `Linux`, …
    pub platform: String,
    /// `ProcessInfo.operatingSystemVersionString`.
    pub os_version: String,
    /// macOS build (e.g. `23E214`); `None` elsewhere.
    pub os_build: Option<String>,
    /// CPU brand string (e.g. `Apple M2`).
    pub chip: Option<String>,
    /// Whether Core ML exists here.
    pub coreml_available: bool,
    /// CoreML.framework's version.
    pub coreml_version: Option<String>,
    /// Whether there is a Neural Engine; `None` when it cannot be known.
    pub neural_engine_present: Option<bool>,
    /// Neural Engine cores, where known.
    pub neural_engine_cores: Option<u32>,
    /// Whether `MLComputePlan` exists (macOS 14.4+).
    pub compute_plan_available: bool,
    /// Whether the deterministic fake runtime serves model calls
    /// (`COREML_BRIDGE_TEST_RUNTIME=1`).
    pub test_runtime: bool,
    /// Why Core ML is unavailable.
    pub reason: Option<String>,
}

pub(super) fn parse_json<T: for<'de> Deserialize<'de>>(
    json: &str,
    op: Operation,
    subject: &str,
) -> std::result::Result<T, BridgeError> {
    serde_json::from_str(json).map_err(|e| {
        BridgeError::refused(
            Status::Internal,
            Error::internal(format!(
                "the bridge's {} JSON for {subject} does not have the documented layout: {e}",
                op.name()
            )),
        )
    })
}

/// Asks the bridge what it runs on (`coreml_runtime_info`). Works where Core
/// ML does not exist (it then says why). Costs one call and a small JSON
/// parse; on macOS the bridge reads a few sysctls and a bundle version.
pub fn runtime_info() -> std::result::Result<RuntimeInfo, BridgeError> {
    ensure_linked()?;
    let mut json = BridgeString::null();
    let mut err = BridgeString::null();
    // SAFETY: both out pointers point at live, empty slots.
    let code = unsafe { ffi::coreml_runtime_info(json.out(), err.out()) };
    check(code, &mut err, Operation::RuntimeInfo, "this process", Duration::ZERO)?;
    let text = json
        .take()
        .ok_or_else(|| missing_out(Operation::RuntimeInfo, "out_json"))?;
    parse_json(&text, Operation::RuntimeInfo, "this process")
}

pub(super) fn missing_out(op: Operation, what: &str) -> BridgeError {
    BridgeError::refused(
        Status::Internal,
        Error::internal(format!(
            "the bridge returned COREML_OK from the {} but left {what} NULL",
            op.name()
        )),
    )
}

/// Compiles a model package (`.mlpackage` directory or `.mlmodel` file) into
/// `<dest_dir>/<package stem>.mlmodelc` and returns that path
/// (`coreml_compile_model`). `dest_dir` must exist and must not already hold
/// the result. Costs a Core ML compile: seconds to minutes for big models.
/// The calling thread waits at most `timeout` (rounded up to whole ms). A
/// compile that finishes later deletes its output and never writes into
/// `dest_dir`.
pub fn compile_model(package: &Path, dest_dir: &Path, timeout: Duration) -> std::result::Result<PathBuf, BridgeError> {
    ensure_linked()?;
    let subject = package.display().to_string();
    let c_package = path_cstring(package, Operation::Compile, "package path")?;
    let c_dest = path_cstring(dest_dir, Operation::Compile, "destination directory")?;
    let mut out = BridgeString::null();
    let mut err = BridgeString::null();
    // SAFETY: NUL-terminated strings that outlive the call; out pointers point at empty slots.
    let code = unsafe {
        ffi::coreml_compile_model(
            c_package.as_ptr(),
            c_dest.as_ptr(),
            timeout_ms(timeout),
            out.out(),
            err.out(),
        )
    };
    check(code, &mut err, Operation::Compile, &subject, timeout)?;
    out.take()
        .map(PathBuf::from)
        .ok_or_else(|| missing_out(Operation::Compile, "out_compiled_path"))
}
