//! File-system helpers for the cache: tree walks that refuse links, durable
//! writes (fsync of files and directories), sizes, removal and copies.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// One regular file found by [`walk`].
#[derive(Debug)]
pub(crate) struct WalkedFile {
    /// Path relative to the walked root, `/`-separated.
    pub rel: String,
    /// Full path.
    pub full: PathBuf,
    /// Length in bytes.
    pub len: u64,
}

/// Every regular file under `root` (sorted by relative path) and every
/// directory (including `root`). Symbolic links, special files and names that
/// are not UTF-8 are refused: a compiled model that points outside itself is
/// not something we install or load. Costs one `readdir` per directory and
/// one `lstat` per entry.
pub(crate) fn walk(root: &Path) -> Result<(Vec<WalkedFile>, Vec<PathBuf>)> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        let dir = dirs[i].clone();
        i += 1;
        let listing = fs::read_dir(&dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        for item in listing {
            let item = item.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
            let full = item.path();
            let ft = item
                .file_type()
                .map_err(|e| Error::io(format!("reading {}", full.display()), e))?;
            if ft.is_dir() {
                dirs.push(full);
            } else if ft.is_file() {
                let len = item
                    .metadata()
                    .map_err(|e| Error::io(format!("reading {}", full.display()), e))?
                    .len();
                let rel = relative(root, &full)?;
                files.push(WalkedFile { rel, full, len });
            } else {
                let what = if ft.is_symlink() {
                    "a symbolic link"
                } else {
                    "a special file"
                };
                return Err(Error::invalid_artifact(
                    root,
                    format!(
                        "expected only regular files and directories, found {what}: {}",
                        full.display()
                    ),
                ));
            }
        }
    }
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok((files, dirs))
}

fn relative(root: &Path, full: &Path) -> Result<String> {
    let rel = full
        .strip_prefix(root)
        .map_err(|_| Error::internal(format!("{} is not under {}", full.display(), root.display())))?;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str().ok_or_else(|| {
                Error::invalid_artifact(root, format!("expected UTF-8 file names, got {}", full.display()))
            })?),
            _ => {
                return Err(Error::internal(format!(
                    "unexpected path component in {}",
                    rel.display()
                )))
            }
        }
    }
    Ok(parts.join("/"))
}

/// Turns a recorded `/`-separated relative path back into a path under
/// `root`, refusing anything that could leave it (`..`, absolute paths,
/// empty components). `None` for such a path.
pub(crate) fn safe_join(root: &Path, rel: &str) -> Option<PathBuf> {
    if rel.is_empty() {
        return None;
    }
    let mut out = root.to_path_buf();
    for part in rel.split('/') {
        let mut comps = Path::new(part).components();
        match (comps.next(), comps.next()) {
            (Some(Component::Normal(s)), None) if s == part => out.push(s),
            _ => return None,
        }
    }
    Some(out)
}

/// What a directory entry is, as `lstat` sees it (links not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Link,
    Fifo,
    Socket,
    Device,
    Other,
}

impl Kind {
    fn of(ft: &fs::FileType) -> Kind {
        #[cfg(unix)]
        use std::os::unix::fs::FileTypeExt;
        if ft.is_symlink() {
            return Kind::Link;
        }
        if ft.is_dir() {
            return Kind::Dir;
        }
        if ft.is_file() {
            return Kind::File;
        }
        #[cfg(unix)]
        {
            if ft.is_fifo() {
                return Kind::Fifo;
            }
            if ft.is_socket() {
                return Kind::Socket;
            }
            if ft.is_block_device() || ft.is_char_device() {
                return Kind::Device;
            }
        }
        Kind::Other
    }

    fn words(self) -> &'static str {
        match self {
            Kind::File => "a regular file",
            Kind::Dir => "a directory",
            Kind::Link => "a symbolic link",
            Kind::Fifo => "a FIFO (named pipe)",
            Kind::Socket => "a socket",
            Kind::Device => "a device",
            Kind::Other => "a special file",
        }
    }
}

/// Splits a `/`-separated path found in a file (a manifest item, a blob file
/// name) into the plain names it goes through, resolving `.` and `..`
/// lexically. `None` when it is empty, absolute or climbs above its base.
/// Lexical resolution is exact here because no link is ever followed below a
/// confined root.
pub(crate) fn normalize(rel: &str) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(s) => out.push(s.to_str()?.to_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!out.is_empty()).then_some(out)
}

/// A directory opened once (its own path may be a link, resolved here) whose
/// files are then opened component by component without following links
/// (`openat` with `O_NOFOLLOW`), and only when they are regular files or
/// directories: FIFOs, sockets and devices are refused without being opened
/// for reading, so they can neither block nor stream forever. Renaming or
/// re-linking things inside the tree after it is opened cannot make a read
/// leave it.
#[derive(Debug)]
pub(crate) struct Confined {
    /// The real path of the root (for messages and listings).
    root: PathBuf,
    dir: File,
}

impl Confined {
    /// Resolves `root`'s real path and opens it. Costs a `realpath` and an `open`.
    pub(crate) fn open(root: &Path) -> Result<Confined> {
        let real = fs::canonicalize(root).map_err(|e| Error::io(format!("opening {}", root.display()), e))?;
        let meta = fs::metadata(&real).map_err(|e| Error::io(format!("reading {}", root.display()), e))?;
        if !meta.is_dir() {
            return Err(Error::invalid_artifact(
                root,
                format!("expected a directory, found {}", Kind::of(&meta.file_type()).words()),
            ));
        }
        let dir = File::open(&real).map_err(|e| Error::io(format!("opening {}", root.display()), e))?;
        Ok(Confined { root: real, dir })
    }

    /// The root's real path.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Opens the regular file at `rel` (see [`normalize`]). Returns it with
    /// its length. Errors name the path and what was found instead.
    pub(crate) fn open_file(&self, rel: &str) -> Result<(File, u64)> {
        let (f, kind) = self.open_at(rel, false)?;
        debug_assert_eq!(kind, Kind::File);
        let len = f
            .metadata()
            .map_err(|e| Error::io(format!("reading {}", self.show(rel).display()), e))?
            .len();
        Ok((f, len))
    }

    /// Opens the directory at `rel` as a new confined root (`rel` must not
    /// cross links either).
    pub(crate) fn open_dir(&self, rel: &str) -> Result<Confined> {
        let (dir, _) = self.open_at(rel, true)?;
        let parts = normalize(rel).unwrap_or_default();
        let mut root = self.root.clone();
        root.extend(parts);
        Ok(Confined { root, dir })
    }

    /// Reads the regular file at `rel` whole, refusing it unread when it is
    /// longer than `limit`. Costs one allocation of the file's length.
    pub(crate) fn read(&self, rel: &str, limit: u64) -> Result<Vec<u8>> {
        let (f, len) = self.open_file(rel)?;
        if len > limit {
            return Err(Error::invalid_artifact(
                self.show(rel),
                format!("{len} bytes is more than the {limit} allowed for this file"),
            ));
        }
        read_exact_len(f, len, &self.show(rel))
    }

    fn show(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn refuse(&self, rel: &str, at: &str, kind: Kind, want: &str) -> Error {
        let why = if kind == Kind::Link {
            " (links are not followed inside a model)"
        } else {
            ""
        };
        Error::invalid_artifact(
            self.show(rel),
            format!("expected {want} at `{at}`, found {}{why}", kind.words()),
        )
    }

    /// Walks `rel` from the root. With `want_dir` the last component must be
    /// a directory, else a regular file.
    fn open_at(&self, rel: &str, want_dir: bool) -> Result<(File, Kind)> {
        let parts = normalize(rel).ok_or_else(|| {
            Error::invalid_artifact(
                &self.root,
                format!("path `{rel}` is empty, absolute or leaves {}", self.root.display()),
            )
        })?;
        let mut cur: Option<File> = None;
        let mut at = String::new();
        for (i, name) in parts.iter().enumerate() {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(name);
            let last = i + 1 == parts.len();
            let dir = cur.as_ref().unwrap_or(&self.dir);
            let kind = lstat_at(dir, name).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    // A file a model names but does not hold: the model is wrong.
                    Error::invalid_artifact(self.show(rel), format!("`{at}` does not exist"))
                } else {
                    Error::io(format!("reading {}", self.show(&at).display()), e)
                }
            })?;
            let want_here_dir = !last || want_dir;
            let ok = if want_here_dir {
                kind == Kind::Dir
            } else {
                kind == Kind::File
            };
            if !ok {
                let want = if want_here_dir { "a directory" } else { "a regular file" };
                return Err(self.refuse(rel, &at, kind, want));
            }
            let f = open_at_nofollow(dir, name, want_here_dir)
                .map_err(|e| Error::io(format!("opening {}", self.show(&at).display()), e))?;
            // The entry may have been swapped between the lstat and the open.
            let now = f
                .metadata()
                .map(|m| Kind::of(&m.file_type()))
                .map_err(|e| Error::io(format!("reading {}", self.show(&at).display()), e))?;
            if now != kind {
                return Err(self.refuse(
                    rel,
                    &at,
                    now,
                    if want_here_dir { "a directory" } else { "a regular file" },
                ));
            }
            cur = Some(f);
        }
        let f = cur.ok_or_else(|| Error::internal("empty confined path"))?;
        Ok((f, if want_dir { Kind::Dir } else { Kind::File }))
    }
}

#[cfg(unix)]
fn cname(name: &str) -> std::io::Result<std::ffi::CString> {
    std::ffi::CString::new(name)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in a file name"))
}

#[cfg(unix)]
fn lstat_at(dir: &File, name: &str) -> std::io::Result<Kind> {
    use std::os::fd::AsRawFd;
    let c = cname(name)?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `c` is a valid C string, `st` is writable memory of the right type.
    let rc = unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fstatat succeeded, so it filled `st`.
    let mode = unsafe { st.assume_init() }.st_mode & libc::S_IFMT;
    Ok(match mode {
        libc::S_IFREG => Kind::File,
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Link,
        libc::S_IFIFO => Kind::Fifo,
        libc::S_IFSOCK => Kind::Socket,
        libc::S_IFCHR | libc::S_IFBLK => Kind::Device,
        _ => Kind::Other,
    })
}

#[cfg(unix)]
fn open_at_nofollow(dir: &File, name: &str, directory: bool) -> std::io::Result<File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let c = cname(name)?;
    // O_NONBLOCK: should a FIFO be swapped in after the lstat, opening it
    // does not wait for a writer (and the type check after the open refuses it).
    let mut flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
    if directory {
        flags |= libc::O_DIRECTORY;
    }
    // SAFETY: `c` is a valid C string; the returned descriptor is owned by the File.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    if !directory {
        // Back to blocking reads for the regular file it turned out to be.
        // SAFETY: plain fcntl on a descriptor we own.
        unsafe {
            let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
            if fl >= 0 {
                libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
            }
        }
    }
    Ok(f)
}

// Without openat: check each component with lstat, then open by path.
#[cfg(not(unix))]
fn lstat_at(dir: &File, name: &str) -> std::io::Result<Kind> {
    let _ = (dir, name);
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "confined file access needs a Unix host",
    ))
}

#[cfg(not(unix))]
fn open_at_nofollow(dir: &File, name: &str, _directory: bool) -> std::io::Result<File> {
    lstat_at(dir, name).map(|_| unreachable!())
}

/// Reads exactly `len` bytes from `f` (its length when opened): fewer, or
/// more, means it changed while read, which is refused.
pub(crate) fn read_exact_len(f: File, len: u64, shown: &Path) -> Result<Vec<u8>> {
    let cap = usize::try_from(len)
        .map_err(|_| Error::invalid_artifact(shown, format!("{len} bytes do not fit in memory")))?;
    let mut out = Vec::new();
    out.try_reserve_exact(cap)
        .map_err(|_| Error::invalid_artifact(shown, format!("cannot allocate {len} bytes to read it")))?;
    f.take(len.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| Error::io(format!("reading {}", shown.display()), e))?;
    if out.len() as u64 != len {
        return Err(Error::invalid_artifact(
            shown,
            format!(
                "was {len} bytes when opened but {} bytes were read: it changed while being read",
                out.len()
            ),
        ));
    }
    Ok(out)
}

/// Opens `path` for reading (following a link given by the caller) only if
/// it is a regular file; FIFOs, devices and sockets are refused without
/// blocking. Returns the file and its length.
pub(crate) fn open_regular(path: &Path) -> Result<(File, u64)> {
    let mut opts = OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Checking the type first keeps devices from being opened at all.
        if let Ok(m) = fs::metadata(path) {
            let k = Kind::of(&m.file_type());
            if k != Kind::File {
                return Err(Error::invalid_artifact(
                    path,
                    format!("expected a regular file, found {}", k.words()),
                ));
            }
        }
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let f = opts
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let m = f
        .metadata()
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let k = Kind::of(&m.file_type());
    if k != Kind::File {
        return Err(Error::invalid_artifact(
            path,
            format!("expected a regular file, found {}", k.words()),
        ));
    }
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: plain fcntl on a descriptor we own.
        unsafe {
            let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
            if fl >= 0 {
                libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
            }
        }
    }
    Ok((f, m.len()))
}

/// SHA-256 of an open file's remaining bytes as lowercase hex; reads them
/// once in 1 MiB chunks (`path` names the file in errors).
pub(crate) fn hash_open_file(f: &mut File, path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// Hashes every file, flushes it to stable storage, then flushes every
/// directory deepest first. Returns `(relative path, size, sha256)` per file.
/// Costs one full read of the tree plus one fsync per file and directory.
pub(crate) fn hash_and_sync(root: &Path) -> Result<Vec<(String, u64, String)>> {
    let (files, mut dirs) = walk(root)?;
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let mut file = File::open(&f.full).map_err(|e| Error::io(format!("opening {}", f.full.display()), e))?;
        let sha = hash_open_file(&mut file, &f.full)?;
        file.sync_all()
            .map_err(|e| Error::io(format!("syncing {}", f.full.display()), e))?;
        out.push((f.rel, f.len, sha));
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        sync_dir(&d)?;
    }
    Ok(out)
}

/// Flushes a directory's entries (names created, renamed or removed in it) to
/// stable storage. File systems that cannot sync a directory are tolerated.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let d = File::open(path).map_err(|e| Error::io(format!("opening directory {}", path.display()), e))?;
        if let Err(e) = d.sync_all() {
            use std::io::ErrorKind;
            if !matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::Unsupported) {
                return Err(Error::io(format!("syncing directory {}", path.display()), e));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Creates (or replaces) `path` with `bytes` and flushes it to stable storage.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Sets `path`'s modification time to now, creating it empty if missing (its
/// parent must exist). One `open` and one `futimens`; content is untouched.
pub(crate) fn touch(path: &Path) -> std::io::Result<()> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?
        .set_modified(SystemTime::now())
}

/// Total length of the regular files under `path` (0 if it is missing).
/// Best effort: unreadable parts count as empty. Links are not followed.
pub(crate) fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    let Ok(listing) = fs::read_dir(path) else {
        return 0;
    };
    listing.flatten().map(|e| tree_size(&e.path())).sum()
}

/// Removes a directory tree (or a lone file); a missing one is fine.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    let removed = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match removed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

/// Copies the tree at `src` into the existing directory `dst` (files and
/// directories only; links refused). Costs one read and one write per byte.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let (files, dirs) = walk(src)?;
    // Files are read through the root, so a link swapped in after the walk
    // is refused rather than followed.
    let root = Confined::open(src)?;
    for d in dirs.iter().skip(1) {
        let rel = relative(src, d)?;
        let to = safe_join(dst, &rel).ok_or_else(|| Error::internal(format!("bad relative path {rel}")))?;
        fs::create_dir_all(&to).map_err(|e| Error::io(format!("creating {}", to.display()), e))?;
    }
    for f in files {
        let to = safe_join(dst, &f.rel).ok_or_else(|| Error::internal(format!("bad relative path {}", f.rel)))?;
        let (mut from, _) = root.open_file(&f.rel)?;
        File::create(&to)
            .and_then(|mut out| std::io::copy(&mut from, &mut out))
            .map_err(|e| Error::io(format!("copying {} to {}", f.full.display(), to.display()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_join_refuses_paths_that_leave_the_root() {
        let root = Path::new("/r");
        assert_eq!(safe_join(root, "a/b.bin"), Some(PathBuf::from("/r/a/b.bin")));
        for bad in ["", "../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a/."] {
            assert_eq!(safe_join(root, bad), None, "{bad:?}");
        }
    }

    #[test]
    fn walk_lists_files_sorted_with_sizes() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("w/x")).unwrap();
        fs::write(d.path().join("w/x/b"), b"123").unwrap();
        fs::write(d.path().join("a"), b"1").unwrap();
        let (files, dirs) = walk(d.path()).unwrap();
        let got: Vec<(&str, u64)> = files.iter().map(|f| (f.rel.as_str(), f.len)).collect();
        assert_eq!(got, vec![("a", 1), ("w/x/b", 3)]);
        assert_eq!(dirs.len(), 3);
        assert_eq!(tree_size(d.path()), 4);
    }

    #[test]
    fn normalize_resolves_dots_lexically_and_refuses_leaving() {
        let n = |s: &str| normalize(s).map(|v| v.join("/"));
        assert_eq!(n("a/./b/../c").as_deref(), Some("a/c"));
        assert_eq!(n("a/../a/m.bin").as_deref(), Some("a/m.bin"));
        for bad in ["", ".", "..", "a/../..", "/etc/passwd", "a/../../b"] {
            assert_eq!(n(bad), None, "{bad:?}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn confined_opens_refuse_links_at_any_level_and_paths_that_leave() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/f"), b"hello").unwrap();
        fs::write(d.path().join("outside"), b"secret").unwrap();
        std::os::unix::fs::symlink(root.join("a"), root.join("la")).unwrap();
        std::os::unix::fs::symlink(d.path().join("outside"), root.join("a/lf")).unwrap();
        let c = Confined::open(&root).unwrap();
        assert_eq!(c.read("a/b/f", 5).unwrap(), b"hello");
        assert_eq!(c.read("a/../a/b/./f", 5).unwrap(), b"hello");
        let e = c.read("a/b/f", 4).unwrap_err().to_string();
        assert!(e.contains("5 bytes is more than the 4 allowed"), "{e}");
        let e = c.read("la/b/f", 99).unwrap_err().to_string();
        assert!(e.contains("expected a directory at `la`, found a symbolic link"), "{e}");
        let e = c.read("a/lf", 99).unwrap_err().to_string();
        assert!(
            e.contains("expected a regular file at `a/lf`, found a symbolic link"),
            "{e}"
        );
        let e = c.open_dir("la").unwrap_err().to_string();
        assert!(e.contains("found a symbolic link"), "{e}");
        let e = c.read("../outside", 99).unwrap_err().to_string();
        assert!(e.contains("leaves"), "{e}");
        let e = c.read("a/missing", 99).unwrap_err().to_string();
        assert!(e.contains("`a/missing` does not exist"), "{e}");
        // The root itself may be reached through a link: it is resolved once.
        std::os::unix::fs::symlink(&root, d.path().join("via")).unwrap();
        assert_eq!(
            Confined::open(&d.path().join("via")).unwrap().read("a/b/f", 5).unwrap(),
            b"hello"
        );
    }

    #[cfg(unix)]
    #[test]
    fn walk_refuses_symbolic_links() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/hostname", d.path().join("l")).unwrap();
        let e = walk(d.path()).unwrap_err().to_string();
        assert!(e.contains("found a symbolic link"), "{e}");
    }
}
