//! Where the cache lives and how big it may grow ([`CacheConfig`]), the host's versions, and
//! the rule that says which versions an entry must have been built for.

use super::*;

/// Where the cache lives and how big it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Root directory (created on open).
    pub root: PathBuf,
    /// Byte budget over all entries' payloads.
    pub max_bytes: u64,
    /// Entry budget.
    pub max_entries: usize,
    /// Never build: [`ModelCache::get_or_build`] serves existing entries and
    /// refuses to compile missing ones.
    pub precompiled_only: bool,
    /// How long [`ModelCache::get_or_build`] waits for another thread or
    /// process compiling the same key; `None` waits as long as it takes.
    pub lock_wait: Option<Duration>,
}

impl CacheConfig {
    /// A configuration rooted at `root` with the default budgets.
    pub fn at(root: impl Into<PathBuf>) -> CacheConfig {
        CacheConfig {
            root: root.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
            precompiled_only: false,
            lock_wait: None,
        }
    }

    /// A configuration rooted at [`default_root`] with the default budgets.
    pub fn from_env() -> Result<CacheConfig> {
        Ok(CacheConfig::at(default_root()?))
    }

    /// Sets the byte budget.
    pub fn with_max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Sets the entry budget.
    pub fn with_max_entries(mut self, entries: usize) -> Self {
        self.max_entries = entries;
        self
    }

    /// Turns precompiled-only mode on or off.
    pub fn with_precompiled_only(mut self, on: bool) -> Self {
        self.precompiled_only = on;
        self
    }

    /// Bounds the wait for a concurrent compile of the same key.
    pub fn with_lock_wait(mut self, wait: Option<Duration>) -> Self {
        self.lock_wait = wait;
        self
    }
}

/// The cache root: `$APPLE_SILICON_CACHE_DIR` if set and non-empty, else
/// `~/Library/Caches/apple-silicon` on macOS, else `$XDG_CACHE_HOME/apple-silicon`
/// (when absolute) or `~/.cache/apple-silicon`. Reads three environment
/// variables; touches no file.
pub fn default_root() -> Result<PathBuf> {
    resolve_root(
        std::env::var_os(CACHE_DIR_ENV),
        std::env::var_os("HOME"),
        std::env::var_os("XDG_CACHE_HOME"),
        cfg!(target_os = "macos"),
    )
    .ok_or_else(|| Error::Unavailable {
        engine: "compiled-model cache".into(),
        reason: format!("no cache directory: expected {CACHE_DIR_ENV} or HOME to be set, found neither"),
    })
}

pub(super) fn resolve_root(
    explicit: Option<OsString>,
    home: Option<OsString>,
    xdg: Option<OsString>,
    macos: bool,
) -> Option<PathBuf> {
    if let Some(dir) = explicit.filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    if !macos {
        if let Some(x) = xdg.map(PathBuf::from).filter(|p| p.is_absolute()) {
            return Some(x.join(APP_DIR));
        }
    }
    let home = PathBuf::from(home.filter(|h| !h.is_empty())?);
    Some(if macos {
        home.join("Library").join("Caches").join(APP_DIR)
    } else {
        home.join(".cache").join(APP_DIR)
    })
}

/// This host: platform (`macos-arm64`, `linux-x86_64`, …), OS build (macOS
/// `kern.osversion`, the kernel release on Linux, else [`ANY`]), and the Core
/// ML version: the real one where the Swift bridge is linked and reports it
/// (the same value [`crate::CoreMlEngine`] puts in its cache keys), `none`
/// where Core ML does not exist, [`ANY`] on an Apple platform without the
/// bridge (a build without the `coreml` feature cannot know it). Backend
/// `mlprogram`. Costs one small file read on Linux; on macOS one `sysctl`
/// process and, with the bridge, one runtime-info call.
pub fn host_meta() -> CompiledMeta {
    let os = std::env::consts::OS;
    let arch = match (os, std::env::consts::ARCH) {
        ("macos", "aarch64") => "arm64",
        (_, a) => a,
    };
    CompiledMeta {
        platform: format!("{os}-{arch}"),
        coreml_version: host_coreml_version(),
        backend: "mlprogram".to_string(),
        os_build: detect_os_build().unwrap_or_else(|| ANY.to_string()),
    }
}

/// The Core ML version for [`host_meta`]. Only Apple platforms ask the
/// bridge: on Linux the bridge is the test runtime, whose keys say
/// `test-runtime` and are matched by [`version_rule`].
pub(super) fn host_coreml_version() -> String {
    if !cfg!(target_vendor = "apple") {
        return "none".to_string();
    }
    match crate::core_ml_bridge::runtime_info() {
        Ok(info) => info.coreml_version.unwrap_or_else(|| ANY.to_string()),
        Err(_) => ANY.to_string(),
    }
}

/// What a cache entry was built for, from the key it was built under (the
/// key is what the building engine knew: its Core ML version, or for the
/// Candle engine its own version, and the OS build) plus this host's
/// platform.
pub(super) fn built_for(key: &CacheKey, current: &CompiledMeta) -> CompiledMeta {
    CompiledMeta {
        platform: current.platform.clone(),
        coreml_version: key.coreml_version.clone(),
        backend: key.backend.clone(),
        os_build: key.os_build.clone(),
    }
}

/// Which version an entry built for `built` must match here, by who built
/// it: a Candle entry (`candle-<version>`) this build's engine version; a
/// test-runtime entry nothing (the fake runtime has no versions); a Core ML
/// entry the host's Core ML version and OS build. `None` for a field means
/// "not compared".
pub(super) fn version_rule<'a>(current: &'a CompiledMeta, built: &CompiledMeta) -> (Option<&'a str>, Option<&'a str>) {
    if built.coreml_version.starts_with("candle-") {
        (Some(crate::candle_backend::ENGINE_VERSION), None)
    } else if built.coreml_version == "test-runtime" {
        (None, None)
    } else {
        // Entries written before keys carried an OS build say "any"/"unknown".
        let os = (!matches!(built.os_build.as_str(), "any" | "unknown")).then_some(current.os_build.as_str());
        (Some(current.coreml_version.as_str()), os)
    }
}

#[cfg(target_os = "linux")]
pub(super) fn detect_os_build() -> Option<String> {
    let s = fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    Some(s.trim().to_string()).filter(|s| !s.is_empty())
}

#[cfg(target_os = "macos")]
pub(super) fn detect_os_build() -> Option<String> {
    let out = std::process::Command::new("/usr/sbin/sysctl")
        .args(["-n", "kern.osversion"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string()).filter(|s| !s.is_empty())
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub(super) fn detect_os_build() -> Option<String> {
    None
}
