//! `apple-silicon cache …`: list, collect, verify and clear the compiled-model cache.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use apple_silicon::cache::{self, CacheConfig, EntryStatus, GcReport, ModelCache};
use apple_silicon::{CompiledMeta, Error, Result};
use clap::{Args, Subcommand};

/// Arguments of `apple-silicon cache`.
#[derive(Args)]
pub struct CacheArgs {
    /// Cache root [default: $APPLE_SILICON_CACHE_DIR, else the platform's cache directory].
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    action: CacheAction,
}

#[derive(Subcommand)]
enum CacheAction {
    /// List entries with their key fields, size, last use and state.
    Ls {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove stale temporary directories, broken entries and entries built
    /// for another OS build or Core ML version, then apply the budgets.
    Gc {
        /// Byte budget, e.g. 10G, 512M or 1048576 [default: 10G].
        #[arg(long, value_parser = parse_size)]
        max_bytes: Option<u64>,
        /// Entry budget [default: 256].
        #[arg(long)]
        max_entries: Option<usize>,
        /// The current OS build [default: this host's].
        #[arg(long)]
        os_build: Option<String>,
        /// The current Core ML version [default: `none` off Apple platforms;
        /// on macOS not compared unless given].
        #[arg(long)]
        coreml_version: Option<String>,
    },
    /// Hash every file of every entry, evict the bad ones, fail if there were any.
    Verify,
    /// Remove every entry that is not in use.
    Clear,
}

/// Runs one `cache` subcommand.
pub fn run(args: CacheArgs) -> Result<()> {
    let root = match args.dir {
        Some(d) => d,
        None => cache::default_root()?,
    };
    match args.action {
        CacheAction::Ls { json } => cache_ls(&root, json),
        CacheAction::Gc {
            max_bytes,
            max_entries,
            os_build,
            coreml_version,
        } => {
            let mut config = CacheConfig::at(&root);
            config.max_bytes = max_bytes.unwrap_or(config.max_bytes);
            config.max_entries = max_entries.unwrap_or(config.max_entries);
            let mut current = cache::host_meta();
            current.os_build = os_build.unwrap_or(current.os_build);
            current.coreml_version = coreml_version.unwrap_or(current.coreml_version);
            cache_gc(config, current)
        }
        CacheAction::Verify => cache_verify(&root),
        CacheAction::Clear => cache_clear(&root),
    }
}

fn cache_ls(root: &Path, json: bool) -> Result<()> {
    let cache = ModelCache::new(CacheConfig::at(root), cache::host_meta())?;
    let entries = cache.entries()?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).map_err(|e| Error::internal(e.to_string()))?
        );
        return Ok(());
    }
    let now = unix_ms_now();
    println!(
        "{:<32}  {:<13}  {:>10}  {:<12}  key (sha256 coreml backend units quant shape os)",
        "id", "state", "size", "last used"
    );
    for e in &entries {
        let (state, detail) = match &e.status {
            EntryStatus::Complete => ("complete", None),
            EntryStatus::OtherVersion(d) => ("other-version", Some(d)),
            EntryStatus::Incomplete => ("incomplete", None),
            EntryStatus::Corrupt(d) => ("corrupt", Some(d)),
        };
        let key = e.key.as_ref().map_or_else(
            || "?".to_string(),
            |k| {
                format!(
                    "{} {} {} {} {} {} {}",
                    k.sha256.get(..12).unwrap_or(&k.sha256),
                    k.coreml_version,
                    k.backend,
                    k.compute_units,
                    k.quantization,
                    k.shape_key,
                    k.os_build
                )
            },
        );
        let used = e.last_used_unix_ms.map_or_else(|| "never".to_string(), |t| ago(now, t));
        println!(
            "{:<32}  {:<13}  {:>10}  {:<12}  {key}",
            e.id,
            state,
            human_bytes(e.size_bytes),
            used
        );
        if let Some(d) = detail {
            println!("{:<32}  ({d})", "");
        }
    }
    let total = entries.iter().map(|e| e.size_bytes).fold(0u64, u64::saturating_add);
    println!(
        "{} entries, {} in {}",
        entries.len(),
        human_bytes(total),
        root.display()
    );
    Ok(())
}

fn cache_gc(config: CacheConfig, current: CompiledMeta) -> Result<()> {
    let root = config.root.clone();
    let report = ModelCache::new(config, current)?.gc()?;
    print_report(&report);
    println!("freed {} in {}", human_bytes(report.bytes_freed()), root.display());
    Ok(())
}

fn cache_verify(root: &Path) -> Result<()> {
    let report = ModelCache::new(CacheConfig::at(root), cache::host_meta())?.verify()?;
    for b in &report.bad {
        println!(
            "bad      {} ({}: {}), evicted, freed {}",
            b.id,
            b.reason,
            b.detail,
            human_bytes(b.bytes)
        );
    }
    for id in &report.busy {
        println!("skipped  {id} (in use)");
    }
    println!("checked {} entries, {} bad", report.checked, report.bad.len());
    if report.bad.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid_artifact(
            root,
            format!(
                "{} of {} cache entries failed verification and were evicted",
                report.bad.len(),
                report.checked
            ),
        ))
    }
}

fn cache_clear(root: &Path) -> Result<()> {
    let report = ModelCache::new(CacheConfig::at(root), cache::host_meta())?.clear()?;
    print_report(&report);
    println!("freed {} in {}", human_bytes(report.bytes_freed()), root.display());
    if report.errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Io {
            context: format!("clearing the cache at {}", root.display()),
            source: std::io::Error::other(format!(
                "{} problems: {}",
                report.errors.len(),
                report.errors.join("; ")
            )),
        })
    }
}

fn print_report(report: &GcReport) {
    for e in &report.evicted {
        println!(
            "evicted  {} ({}: {}), freed {}",
            e.id,
            e.reason,
            e.detail,
            human_bytes(e.bytes)
        );
    }
    for t in &report.stale_temps {
        println!(
            "removed  {} (left by a process that died), freed {}",
            t.path.display(),
            human_bytes(t.bytes)
        );
    }
    for id in &report.busy {
        println!("skipped  {id} (in use)");
    }
    for e in &report.errors {
        println!("error    {e}");
    }
}

/// `1048576`, `512K`, `10M`, `10G`, `1T` (binary units; `B`/`iB` suffix allowed).
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let t = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (digits, shift) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 10),
        Some('m') => (&t[..t.len() - 1], 20),
        Some('g') => (&t[..t.len() - 1], 30),
        Some('t') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("expected a size such as 10G, 512M or 1048576, got `{s}`"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size `{s}` does not fit in 64 bits"))
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ago(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("3mb"), Ok(3 << 20));
        assert!(parse_size("ten").unwrap_err().contains("got `ten`"));
        assert!(parse_size("99999999999T").unwrap_err().contains("64 bits"));
    }

    #[test]
    fn sizes_and_ages_print_for_people() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(ago(100_000, 40_000), "1 min ago");
        assert_eq!(ago(10_000, 5_000), "5 s ago");
        assert_eq!(ago(3 * 86_400_000, 0), "3 d ago");
    }
}
