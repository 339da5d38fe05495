//! Reader for MILBlob storage v2 (`weights/weight.bin` inside an `.mlpackage`).
//!
//! Layout (little-endian): a 64-byte header (`u32 count`, `u32 version = 2`,
//! zeros), then per blob a 64-byte metadata record on a 64-byte boundary
//! (`u32 0xDEADBEEF`, `u32 dtype`, `u64 size_in_bytes`, `u64 data_offset`,
//! `u64 padding_bits`, reserved) whose data lives at `data_offset`. A
//! program's `blobFileValue.offset` points at the metadata record.
//!
//! Every offset and size is checked against the file before anything is read,
//! so a truncated or hostile file yields [`Error::InvalidArtifact`], never a
//! panic or an out-of-bounds read. The file is memory-mapped: opening costs a
//! `mmap`, reading a blob costs only the bytes touched.

use std::fs::File;
use std::io::{Seek, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use half::{bf16, f16};
use memmap2::Mmap;

use crate::error::{Error, Result};

const HEADER_SIZE: u64 = 64;
const RECORD_SIZE: u64 = 64;
const SENTINEL: u32 = 0xDEAD_BEEF;
const VERSION: u32 = 2;

/// Element type of a stored blob (MILBlob's own codes, not the MIL dtype enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobDType {
    F16,
    F32,
    U8,
    I8,
    BF16,
    I16,
    U16,
    I4,
    U1,
    U2,
    U4,
    U3,
    U6,
    I32,
    U32,
}

impl BlobDType {
    /// Decodes a storage dtype code.
    pub fn from_code(code: u32) -> Option<BlobDType> {
        Some(match code {
            1 => BlobDType::F16,
            2 => BlobDType::F32,
            3 => BlobDType::U8,
            4 => BlobDType::I8,
            5 => BlobDType::BF16,
            6 => BlobDType::I16,
            7 => BlobDType::U16,
            8 => BlobDType::I4,
            9 => BlobDType::U1,
            10 => BlobDType::U2,
            11 => BlobDType::U4,
            12 => BlobDType::U3,
            13 => BlobDType::U6,
            14 => BlobDType::I32,
            15 => BlobDType::U32,
            _ => return None,
        })
    }

    /// Bits per element.
    pub fn bits(self) -> u64 {
        match self {
            BlobDType::U1 => 1,
            BlobDType::U2 => 2,
            BlobDType::U3 => 3,
            BlobDType::I4 | BlobDType::U4 => 4,
            BlobDType::U6 => 6,
            BlobDType::U8 | BlobDType::I8 => 8,
            BlobDType::F16 | BlobDType::BF16 | BlobDType::I16 | BlobDType::U16 => 16,
            BlobDType::F32 | BlobDType::I32 | BlobDType::U32 => 32,
        }
    }

    /// Whether elements are narrower than a byte (packed LSB first).
    pub fn is_sub_byte(self) -> bool {
        self.bits() < 8
    }
}

/// A memory-mapped, header-checked `weight.bin`.
pub struct WeightFile {
    path: PathBuf,
    bytes: Bytes,
    count: u32,
}

enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
    Shared(Arc<FileBytes>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
            Bytes::Shared(v) => v.whole(),
        }
    }
}

/// A file's bytes read into memory, whose whole pages a consumer that has
/// copied what it needs may give back to the system
/// ([`WeightFile::release`]): large files live in a private anonymous
/// mapping, small ones in a `Vec`. Released pages read as zeros, so every
/// read checks that it touches none ([`FileBytes::get`]).
pub struct FileBytes {
    store: Store,
    /// Released byte ranges (page-aligned), in release order.
    released: Mutex<Vec<Range<usize>>>,
}

enum Store {
    Vec(Vec<u8>),
    #[cfg(unix)]
    Anon(memmap2::MmapRaw),
}

/// Files from this size on are read into an anonymous mapping (their pages
/// can be released one by one).
const ANON_FROM: u64 = 1 << 20;

impl FileBytes {
    /// Bytes held in a `Vec` (never released).
    pub fn from_vec(v: Vec<u8>) -> FileBytes {
        FileBytes {
            store: Store::Vec(v),
            released: Mutex::new(Vec::new()),
        }
    }

    /// Reads exactly `len` bytes of `f` (`shown` names it in errors); a file
    /// that grew or shrank meanwhile is refused. Costs one read and `len`
    /// bytes of memory.
    pub fn read(f: File, len: u64, shown: &Path) -> Result<FileBytes> {
        #[cfg(unix)]
        if len >= ANON_FROM {
            use std::io::Read;
            let n = usize::try_from(len)
                .map_err(|_| Error::invalid_artifact(shown, format!("{len} bytes do not fit in memory")))?;
            let io = |e| Error::io(format!("reading {}", shown.display()), e);
            let mut map = memmap2::MmapOptions::new().len(n).map_anon().map_err(io)?;
            let mut f = f.take(len.saturating_add(1));
            let changed = || {
                Error::invalid_artifact(
                    shown,
                    format!("was {len} bytes when opened but a different size was read: it changed while being read"),
                )
            };
            f.read_exact(&mut map[..]).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => changed(),
                _ => io(e),
            })?;
            if f.read(&mut [0u8; 1]).map_err(io)? != 0 {
                return Err(changed());
            }
            return Ok(FileBytes {
                store: Store::Anon(memmap2::MmapRaw::from(map)),
                released: Mutex::new(Vec::new()),
            });
        }
        crate::cache::fsx::read_exact_len(f, len, shown).map(FileBytes::from_vec)
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        match &self.store {
            Store::Vec(v) => v.len(),
            #[cfg(unix)]
            Store::Anon(m) => m.len(),
        }
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn whole(&self) -> &[u8] {
        match &self.store {
            Store::Vec(v) => v,
            // SAFETY: the mapping lives as long as `self`; its bytes change
            // only in `release`, whose caller guarantees that no slice of the
            // released pages is alive, and reads check `released` first.
            #[cfg(unix)]
            Store::Anon(m) => unsafe { std::slice::from_raw_parts(m.as_ptr(), m.len()) },
        }
    }

    /// Whether any byte of `r` has been released.
    fn touches_released(&self, r: &Range<usize>) -> bool {
        let released = self.released.lock().unwrap_or_else(|p| p.into_inner());
        released.iter().any(|x| x.start < r.end && r.start < x.end)
    }

    /// All the bytes, or `None` once any page has been released.
    pub fn get(&self) -> Option<&[u8]> {
        let released = self.released.lock().unwrap_or_else(|p| p.into_inner());
        released.is_empty().then(|| self.whole())
    }
}

impl std::fmt::Debug for FileBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileBytes({} bytes)", self.len())
    }
}

impl std::fmt::Debug for WeightFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WeightFile({}, {} blobs, {} bytes)",
            self.path.display(),
            self.count,
            self.len()
        )
    }
}

/// One stored blob: its dtype and raw bytes (borrowed from the file).
#[derive(Debug, Clone, Copy)]
pub struct Blob<'a> {
    /// Stored element type.
    pub dtype: BlobDType,
    /// Raw bytes, exactly `size_in_bytes` long.
    pub data: &'a [u8],
    /// Unused bits at the end of the last byte (sub-byte types only).
    pub padding_bits: u64,
    /// Number of elements the blob holds.
    pub count: u64,
    /// Offset of its metadata record in the file (`blobFileValue.offset`).
    pub offset: u64,
    /// The weight file it was read from (for messages).
    pub file: &'a Path,
}

impl WeightFile {
    /// Maps `path` and checks its header. A FIFO, device or socket is refused
    /// without being read (a link named by the caller is followed; packages
    /// open their weights with [`crate::mlpackage::MlPackage::open_weights`], which
    /// follows none).
    pub fn open(path: impl AsRef<Path>) -> Result<WeightFile> {
        let path = path.as_ref();
        let (f, _) = crate::cache::fsx::open_regular(path)?;
        Self::from_file(f, path)
    }

    /// Maps an already opened regular file (`path` names it in errors) and
    /// checks its header.
    pub fn from_file(f: File, path: impl AsRef<Path>) -> Result<WeightFile> {
        let path = path.as_ref();
        // SAFETY: the mapping is read-only. A weight file truncated by another
        // process while mapped could fault; packages are treated as immutable
        // inputs, and the cache only ever renames complete files into place.
        let map = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(format!("mapping {}", path.display()), e))?;
        Self::new(path.to_path_buf(), Bytes::Mapped(map))
    }

    /// Checks and wraps bytes shared with others (`origin` names them in errors).
    pub fn from_shared(bytes: Arc<FileBytes>, origin: impl Into<PathBuf>) -> Result<WeightFile> {
        Self::new(origin.into(), Bytes::Shared(bytes))
    }

    /// Checks and wraps bytes held in memory (`origin` names them in errors).
    pub fn from_bytes(bytes: Vec<u8>, origin: impl Into<PathBuf>) -> Result<WeightFile> {
        Self::new(origin.into(), Bytes::Owned(bytes))
    }

    fn new(path: PathBuf, bytes: Bytes) -> Result<WeightFile> {
        let b = bytes.as_slice();
        if (b.len() as u64) < HEADER_SIZE {
            return Err(Error::invalid_artifact(
                &path,
                format!("weight file is {} bytes, shorter than its 64-byte header", b.len()),
            ));
        }
        let count = u32_at(b, 0);
        let version = u32_at(b, 4);
        if version != VERSION {
            return Err(Error::invalid_artifact(
                &path,
                format!("weight file storage version is {version}, expected {VERSION}"),
            ));
        }
        Ok(WeightFile { path, bytes, count })
    }

    /// Number of blobs the header declares.
    pub fn blob_count(&self) -> u32 {
        self.count
    }

    /// File size in bytes.
    pub fn len(&self) -> u64 {
        self.bytes.as_slice().len() as u64
    }

    /// Whether the file has no bytes beyond the header.
    pub fn is_empty(&self) -> bool {
        self.len() <= HEADER_SIZE
    }

    /// Where the file came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn bad(&self, reason: String) -> Error {
        Error::invalid_artifact(&self.path, reason)
    }

    /// Reads the blob whose metadata record starts at `offset` (the value of a
    /// `blobFileValue.offset`). Checks alignment, sentinel, dtype and that
    /// the data lies inside the file.
    pub fn blob(&self, offset: u64) -> Result<Blob<'_>> {
        let b = self.bytes.as_slice();
        let len = b.len() as u64;
        if offset < HEADER_SIZE || !offset.is_multiple_of(64) {
            return Err(self.bad(format!(
                "blob offset {offset} is not a 64-byte aligned offset past the header"
            )));
        }
        let rec_end = offset.checked_add(RECORD_SIZE).filter(|&e| e <= len).ok_or_else(|| {
            self.bad(format!(
                "blob metadata at offset {offset} runs past the end of the file ({len} bytes)"
            ))
        })?;
        let o = offset as usize;
        let sentinel = u32_at(b, o);
        if sentinel != SENTINEL {
            return Err(self.bad(format!(
                "blob metadata at offset {offset} has sentinel {sentinel:#010x}, expected {SENTINEL:#010x}"
            )));
        }
        let code = u32_at(b, o + 4);
        let dtype = BlobDType::from_code(code)
            .ok_or_else(|| self.bad(format!("blob at offset {offset} has unknown dtype code {code}")))?;
        let size = u64_at(b, o + 8);
        let data_offset = u64_at(b, o + 16);
        let padding_bits = u64_at(b, o + 24);
        if data_offset < rec_end {
            return Err(self.bad(format!(
                "blob at offset {offset}: data offset {data_offset} overlaps its own metadata"
            )));
        }
        let data_end = data_offset.checked_add(size).filter(|&e| e <= len).ok_or_else(|| {
            self.bad(format!(
                "blob at offset {offset}: {size} bytes at data offset {data_offset} run past the end of the file ({len} bytes)"
            ))
        })?;
        let total_bits = size
            .checked_mul(8)
            .ok_or_else(|| self.bad(format!("blob at offset {offset}: size {size} overflows")))?;
        let bits = dtype.bits();
        if padding_bits >= 8 || padding_bits > total_bits || (!dtype.is_sub_byte() && padding_bits != 0) {
            return Err(self.bad(format!(
                "blob at offset {offset}: padding of {padding_bits} bits is invalid for {dtype:?} data of {size} bytes"
            )));
        }
        let used = total_bits - padding_bits;
        if !used.is_multiple_of(bits) {
            return Err(self.bad(format!(
                "blob at offset {offset}: {used} data bits is not a whole number of {bits}-bit {dtype:?} elements"
            )));
        }
        if let Bytes::Shared(fb) = &self.bytes {
            if fb.touches_released(&(data_offset as usize..data_end as usize)) {
                return Err(Error::internal(format!(
                    "{}: blob at offset {offset} was read after its pages were released",
                    self.path.display()
                )));
            }
        }
        Ok(Blob {
            dtype,
            data: &b[data_offset as usize..data_end as usize],
            padding_bits,
            count: used / bits,
            offset,
            file: &self.path,
        })
    }
    /// Decodes the blob at `offset` chunk by chunk with `decode` (called
    /// with sub-blobs that end on element boundaries, appending to the
    /// output), giving each chunk's
    /// whole pages back ([`WeightFile::release`]) once it is decoded: the
    /// file's bytes and the decoded values are never both resident beyond
    /// one chunk (3 MiB). Costs what `decode` costs plus one `madvise` a chunk.
    ///
    /// # Safety
    ///
    /// As for [`WeightFile::release`]: no borrow from [`WeightFile::blob`]
    /// covering this blob's pages may be used after this call.
    pub unsafe fn consume<T>(
        &self,
        offset: u64,
        mut decode: impl FnMut(&Blob<'_>, &mut Vec<T>) -> Result<()>,
    ) -> Result<Vec<T>> {
        // A multiple of 3 bytes and of 8: every element width (1-32 bits,
        // 3 and 6 included) ends on a chunk boundary.
        const CHUNK: usize = 3 << 20;
        let whole = self.blob(offset)?;
        let (ptr, len, bits) = (whole.data.as_ptr(), whole.data.len(), whole.dtype.bits());
        let mut out = Vec::new();
        out.try_reserve_exact(whole.count as usize)
            .map_err(|_| Error::MemoryPressure {
                message: format!(
                    "cannot allocate {} decoded elements of {}",
                    whole.count,
                    self.path.display()
                ),
            })?;
        let mut at = 0;
        while at < len {
            let end = (at + CHUNK).min(len);
            let last = end == len;
            // SAFETY: `at..end` lies inside the blob's checked range; pages
            // released so far are before `at`.
            let data = unsafe { std::slice::from_raw_parts(ptr.add(at), end - at) };
            let padding_bits = if last { whole.padding_bits } else { 0 };
            let part = Blob {
                dtype: whole.dtype,
                data,
                padding_bits,
                count: ((end - at) as u64 * 8 - padding_bits) / bits,
                offset: whole.offset,
                file: whole.file,
            };
            decode(&part, &mut out)?;
            // SAFETY: `part` and `data` are not used after this; the caller
            // guarantees no other borrow of these pages.
            unsafe { self.release(&part) };
            at = end;
        }
        Ok(out)
    }

    /// Gives back the whole pages of `blob`'s data once it has been decoded
    /// into memory of its own, so that the file's bytes and the decoded copy
    /// are not both resident. A mapped file's pages fault back in from the
    /// file if read again; bytes held in an anonymous mapping are gone, and
    /// a later [`WeightFile::blob`] touching them is an error. No-op for bytes
    /// in a `Vec` and off Unix. Costs one `madvise`.
    ///
    /// # Safety
    ///
    /// No slice of `blob`'s data (nor any other borrow from [`WeightFile::blob`]
    /// covering its pages) may be used after this call.
    pub unsafe fn release(&self, blob: &Blob<'_>) {
        #[cfg(unix)]
        {
            let whole = self.bytes.as_slice();
            let base = whole.as_ptr() as usize;
            let start = blob.data.as_ptr() as usize;
            if start < base || start + blob.data.len() > base + whole.len() {
                return; // not a blob of this file
            }
            // Whole pages inside the blob only: its neighbours keep theirs.
            let page = page_size();
            let from = (start - base).div_ceil(page) * page;
            let to = (start - base + blob.data.len()) / page * page;
            if to <= from {
                return;
            }
            match &self.bytes {
                // SAFETY: a read-only private file mapping: the pages are
                // re-read from the (immutable) file on the next access.
                Bytes::Mapped(m) => {
                    let _ = unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, to - from) };
                }
                Bytes::Shared(fb) => {
                    if let Store::Anon(m) = &fb.store {
                        fb.released.lock().unwrap_or_else(|p| p.into_inner()).push(from..to);
                        // SAFETY: the caller guarantees no live borrow of
                        // these pages; reads check `released` from now on.
                        let _ =
                            unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, to - from) };
                    }
                }
                Bytes::Owned(_) => {}
            }
        }
    }
}

#[cfg(unix)]
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

impl Blob<'_> {
    fn wrong_type(&self, want: &str) -> Error {
        Error::invalid_artifact(
            self.file,
            format!(
                "the blob at offset {} holds {:?} data, which cannot be read as {want}",
                self.offset, self.dtype
            ),
        )
    }

    /// Float data (f32, f16 or bf16) converted to f32.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        Ok(match self.dtype {
            BlobDType::F32 => bytemuck::pod_collect_to_vec(self.data),
            BlobDType::F16 => self
                .data
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes(c.try_into().unwrap()).to_f32())
                .collect(),
            BlobDType::BF16 => self
                .data
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes(c.try_into().unwrap()).to_f32())
                .collect(),
            _ => return Err(self.wrong_type("floats")),
        })
    }

    /// f16 data as raw half values (no conversion).
    pub fn to_f16(&self) -> Result<Vec<f16>> {
        match self.dtype {
            BlobDType::F16 => Ok(bytemuck::pod_collect_to_vec(self.data)),
            _ => Err(self.wrong_type("f16")),
        }
    }

    /// Integer data of any width (1–32 bits, signed or unsigned, sub-byte
    /// types unpacked LSB first) widened to i64.
    pub fn to_i64(&self) -> Result<Vec<i64>> {
        let d = self.data;
        Ok(match self.dtype {
            BlobDType::U8 => d.iter().map(|&v| v as i64).collect(),
            BlobDType::I8 => d.iter().map(|&v| v as i8 as i64).collect(),
            BlobDType::I16 => d
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
            BlobDType::U16 => d
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
            BlobDType::I32 => d
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            BlobDType::U32 => d
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            BlobDType::U1 | BlobDType::U2 | BlobDType::U3 | BlobDType::U4 | BlobDType::U6 => {
                unpack_bits(d, self.dtype.bits() as u32, self.count as usize)
                    .into_iter()
                    .map(|v| v as i64)
                    .collect()
            }
            BlobDType::I4 => unpack_bits(d, 4, self.count as usize)
                .into_iter()
                .map(|v| if v >= 8 { v as i64 - 16 } else { v as i64 })
                .collect(),
            _ => return Err(self.wrong_type("integers")),
        })
    }
}

impl BlobDType {
    /// The storage dtype code (inverse of [`BlobDType::from_code`]).
    pub fn code(self) -> u32 {
        match self {
            BlobDType::F16 => 1,
            BlobDType::F32 => 2,
            BlobDType::U8 => 3,
            BlobDType::I8 => 4,
            BlobDType::BF16 => 5,
            BlobDType::I16 => 6,
            BlobDType::U16 => 7,
            BlobDType::I4 => 8,
            BlobDType::U1 => 9,
            BlobDType::U2 => 10,
            BlobDType::U4 => 11,
            BlobDType::U3 => 12,
            BlobDType::U6 => 13,
            BlobDType::I32 => 14,
            BlobDType::U32 => 15,
        }
    }
}

/// Writes a MILBlob v2 file: blobs appended one after another, each record
/// and its data on a 64-byte boundary. Byte-sized dtypes only. The blobs go
/// straight to `out` (buffered), so writing a file of any size holds no copy
/// of it; the header's blob count is written last, by [`WeightWriter::finish`].
#[derive(Debug)]
pub struct WeightWriter<W: Write + Seek> {
    out: std::io::BufWriter<W>,
    len: u64,
    count: u32,
    /// The first write error: pushes after it do nothing, `finish` returns it.
    failed: Option<std::io::Error>,
}

impl<W: Write + Seek> WeightWriter<W> {
    /// A file with an empty header, written to `out` from its start.
    pub fn new(out: W) -> WeightWriter<W> {
        let mut w = WeightWriter {
            out: std::io::BufWriter::with_capacity(64 << 10, out),
            len: 0,
            count: 0,
            failed: None,
        };
        w.write(&[0; HEADER_SIZE as usize]);
        w
    }

    fn write(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            if let Err(e) = self.out.write_all(bytes) {
                self.failed = Some(e);
            }
        }
        self.len += bytes.len() as u64;
    }

    /// Appends a blob of `dtype` holding `data` (little-endian elements);
    /// returns the offset of its metadata record, as `blobFileValue.offset`
    /// wants it. A write error is kept for [`WeightWriter::finish`].
    pub fn push(&mut self, dtype: BlobDType, data: &[u8]) -> u64 {
        debug_assert!(!dtype.is_sub_byte());
        let pad = self.len.next_multiple_of(64) - self.len;
        self.write(&[0u8; 64][..pad as usize]);
        let meta = self.len;
        let mut rec = [0u8; RECORD_SIZE as usize];
        rec[0..4].copy_from_slice(&SENTINEL.to_le_bytes());
        rec[4..8].copy_from_slice(&dtype.code().to_le_bytes());
        rec[8..16].copy_from_slice(&(data.len() as u64).to_le_bytes());
        rec[16..24].copy_from_slice(&(meta + RECORD_SIZE).to_le_bytes());
        self.write(&rec);
        self.write(data);
        self.count += 1;
        meta
    }

    /// Writes the header and flushes; returns the sink, or the first error
    /// any write met.
    pub fn finish(mut self) -> std::io::Result<W> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let mut header = [0u8; 8];
        header[0..4].copy_from_slice(&self.count.to_le_bytes());
        header[4..8].copy_from_slice(&VERSION.to_le_bytes());
        self.out.seek(std::io::SeekFrom::Start(0))?;
        self.out.write_all(&header)?;
        self.out.into_inner().map_err(|e| e.into_error())
    }
}

/// Unpacks `count` unsigned `bits`-wide values stored LSB first.
pub fn unpack_bits(data: &[u8], bits: u32, count: usize) -> Vec<u8> {
    debug_assert!((1..=8).contains(&bits));
    let mask = (1u16 << bits) - 1;
    let mut out = Vec::with_capacity(count);
    let mut bit = 0usize;
    for _ in 0..count {
        let byte = bit / 8;
        let shift = (bit % 8) as u32;
        let lo = data.get(byte).copied().unwrap_or(0) as u16;
        let hi = data.get(byte + 1).copied().unwrap_or(0) as u16;
        out.push((((lo | (hi << 8)) >> shift) & mask) as u8);
        bit += bits as usize;
    }
    out
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("caller checked bounds"))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("caller checked bounds"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a weight file the way coremltools lays it out, for tests.
    pub(crate) fn build(blobs: &[(u32, &[u8], u64)]) -> (Vec<u8>, Vec<u64>) {
        let mut f = vec![0u8; 64];
        f[0..4].copy_from_slice(&(blobs.len() as u32).to_le_bytes());
        f[4..8].copy_from_slice(&2u32.to_le_bytes());
        let mut offsets = Vec::new();
        for (code, data, pad) in blobs {
            while !f.len().is_multiple_of(64) {
                f.push(0);
            }
            let meta = f.len() as u64;
            offsets.push(meta);
            let mut rec = [0u8; 64];
            rec[0..4].copy_from_slice(&SENTINEL.to_le_bytes());
            rec[4..8].copy_from_slice(&code.to_le_bytes());
            rec[8..16].copy_from_slice(&(data.len() as u64).to_le_bytes());
            rec[16..24].copy_from_slice(&(meta + 64).to_le_bytes());
            rec[24..32].copy_from_slice(&pad.to_le_bytes());
            f.extend_from_slice(&rec);
            f.extend_from_slice(data);
        }
        (f, offsets)
    }

    /// RSS of this process in kB (Linux).
    #[cfg(target_os = "linux")]
    fn rss_kb() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        l.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn consume_decodes_in_chunks_like_a_whole_read_and_gives_pages_back() {
        // 8 MiB of f32 (crosses chunk boundaries), then a 3-bit blob whose
        // elements straddle bytes, and a small f16 blob after them.
        let n = 2 << 20;
        let vals: Vec<f32> = (0..n).map(|i| (i % 977) as f32 * 0.25 - 7.0).collect();
        let f32s: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let idx: Vec<u8> = (0..(3 << 20) + 3).map(|i| (i * 37 % 251) as u8).collect();
        let f16s: Vec<u8> = [f16::from_f32(0.5), f16::from_f32(-3.0)]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let (file, offs) = build(&[(2, &f32s, 0), (12, &idx, 0), (1, &f16s, 0)]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weight.bin");
        std::fs::write(&path, &file).unwrap();
        let len = file.len() as u64;
        let fb = FileBytes::read(File::open(&path).unwrap(), len, &path).unwrap();
        let w = WeightFile::from_shared(Arc::new(fb), &path).unwrap();
        let want_idx = w.blob(offs[1]).unwrap().to_i64().unwrap();
        #[cfg(target_os = "linux")]
        let before = rss_kb();
        let got = unsafe {
            w.consume(offs[0], |b, out| {
                out.extend(b.to_f32()?);
                Ok(())
            })
        }
        .unwrap();
        assert_eq!(got, vals);
        #[cfg(target_os = "linux")]
        {
            // The 8 MiB of file bytes went back as the 8 MiB copy grew: what
            // is left is at most one chunk's scratch (3 MiB) the allocator keeps.
            let after = rss_kb();
            assert!(after < before + 4096, "RSS grew from {before} to {after} kB");
        }
        let got_idx = unsafe {
            w.consume(offs[1], |b, out| {
                out.extend(b.to_i64()?);
                Ok(())
            })
        }
        .unwrap();
        assert_eq!(got_idx, want_idx);
        // Released bytes are never read as zeros: reading them again is an error.
        let e = w.blob(offs[0]).unwrap_err().to_string();
        assert!(e.contains("after its pages were released"), "{e}");
        // A blob sharing no page with them still reads.
        assert_eq!(w.blob(offs[2]).unwrap().to_f32().unwrap(), vec![0.5, -3.0]);
    }

    #[test]
    fn a_mapped_file_reads_the_same_after_release() {
        let vals: Vec<f32> = (0..(1 << 20)).map(|i| i as f32).collect();
        let f32s: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let (file, offs) = build(&[(2, &f32s, 0)]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weight.bin");
        std::fs::write(&path, &file).unwrap();
        let w = WeightFile::open(&path).unwrap();
        assert_eq!(
            unsafe {
                w.consume(offs[0], |b, out| {
                    out.extend(b.to_f32()?);
                    Ok(())
                })
            }
            .unwrap(),
            vals
        );
        // The pages fault back in from the file.
        assert_eq!(w.blob(offs[0]).unwrap().to_f32().unwrap(), vals);
    }

    #[test]
    fn reads_every_common_dtype() {
        let f32s: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16s: Vec<u8> = [f16::from_f32(0.5), f16::from_f32(-3.0)]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let i8s = [0x80u8, 0x7f, 0x00];
        let u8s = [0u8, 255, 7];
        // uint4 indices [0, 1, 14, 15, 3] pack LSB first into [0x10, 0xfe, 0x03] with 4 padding bits.
        let u4 = [0x10u8, 0xfe, 0x03];
        let (bytes, off) = build(&[(2, &f32s, 0), (1, &f16s, 0), (4, &i8s, 0), (3, &u8s, 0), (11, &u4, 4)]);
        let w = WeightFile::from_bytes(bytes, "mem").unwrap();
        assert_eq!(w.blob_count(), 5);
        assert_eq!(w.blob(off[0]).unwrap().to_f32().unwrap(), vec![1.5, -2.0]);
        assert_eq!(w.blob(off[1]).unwrap().to_f32().unwrap(), vec![0.5, -3.0]);
        assert_eq!(w.blob(off[2]).unwrap().to_i64().unwrap(), vec![-128, 127, 0]);
        assert_eq!(w.blob(off[3]).unwrap().to_i64().unwrap(), vec![0, 255, 7]);
        let b = w.blob(off[4]).unwrap();
        assert_eq!(b.count, 5);
        assert_eq!(b.to_i64().unwrap(), vec![0, 1, 14, 15, 3]);
        assert!(w.blob(off[2]).unwrap().to_f32().is_err());
    }

    #[test]
    fn writer_output_reads_back() {
        let mut w = WeightWriter::new(std::io::Cursor::new(Vec::new()));
        let a = w.push(BlobDType::F32, &[0, 0, 128, 63, 0, 0, 0, 64]);
        let b = w.push(BlobDType::I32, &7i32.to_le_bytes());
        let c = w.push(BlobDType::U8, &[9; 100]);
        let f = WeightFile::from_bytes(w.finish().unwrap().into_inner(), "mem").unwrap();
        assert_eq!(f.blob_count(), 3);
        assert_eq!(f.blob(a).unwrap().to_f32().unwrap(), vec![1.0, 2.0]);
        assert_eq!(f.blob(b).unwrap().to_i64().unwrap(), vec![7]);
        assert_eq!(f.blob(c).unwrap().to_i64().unwrap(), vec![9; 100]);
    }

    #[test]
    fn a_failed_write_is_reported_by_finish() {
        /// Takes 100 bytes, then fails.
        #[derive(Debug)]
        struct Short(std::io::Cursor<Vec<u8>>);
        impl Write for Short {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                if self.0.position() + b.len() as u64 > 100 {
                    return Err(std::io::Error::other("disk full"));
                }
                self.0.write(b)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl Seek for Short {
            fn seek(&mut self, p: std::io::SeekFrom) -> std::io::Result<u64> {
                self.0.seek(p)
            }
        }
        let mut w = WeightWriter::new(Short(std::io::Cursor::new(Vec::new())));
        // Larger than the buffer: written through at once, and refused.
        w.push(BlobDType::U8, &vec![1; 2 << 20]);
        w.push(BlobDType::U8, &[2; 10]);
        let e = w.finish().unwrap_err();
        assert_eq!(e.to_string(), "disk full");
    }

    #[test]
    fn sub_byte_unpacking_is_lsb_first() {
        assert_eq!(unpack_bits(&[0b1110_0100], 2, 4), vec![0, 1, 2, 3]);
        assert_eq!(unpack_bits(&[0b1010_0101], 1, 8), vec![1, 0, 1, 0, 0, 1, 0, 1]);
        // uint3 values 1..=5 = 001 010 011 100 101, LSB first across byte borders.
        let packed = {
            let mut bits: u32 = 0;
            for (i, v) in [1u32, 2, 3, 4, 5].iter().enumerate() {
                bits |= v << (3 * i);
            }
            bits.to_le_bytes()
        };
        assert_eq!(unpack_bits(&packed, 3, 5), vec![1, 2, 3, 4, 5]);
        // uint6 crosses byte boundaries too.
        let six: u32 = 63 | (5 << 6) | (42 << 12);
        assert_eq!(unpack_bits(&six.to_le_bytes(), 6, 3), vec![63, 5, 42]);
        // int4 sign extension.
        let (bytes, off) = build(&[(8, &[0xf8], 0)]);
        let w = WeightFile::from_bytes(bytes, "mem").unwrap();
        assert_eq!(w.blob(off[0]).unwrap().to_i64().unwrap(), vec![-8, -1]);
    }

    fn err_of(bytes: Vec<u8>, offset: u64) -> String {
        match WeightFile::from_bytes(bytes, "w.bin") {
            Err(e) => e.to_string(),
            Ok(w) => w.blob(offset).unwrap_err().to_string(),
        }
    }

    #[test]
    fn hostile_files_are_rejected_with_reasons() {
        let data: Vec<u8> = (0..40u8).collect();
        let (good, off) = build(&[(2, &data, 0)]);
        let o = off[0] as usize;

        assert!(err_of(good[..10].to_vec(), 64).contains("shorter than its 64-byte header"));

        let mut v = good.clone();
        v[4] = 3;
        assert!(err_of(v, 64).contains("storage version is 3"));

        assert!(err_of(good.clone(), 65).contains("64-byte aligned"));
        assert!(err_of(good.clone(), 0).contains("64-byte aligned"));
        assert!(err_of(good.clone(), 1 << 40).contains("past the end"));
        assert!(err_of(good.clone(), u64::MAX - 63).contains("past the end"));

        let mut v = good.clone();
        v[o] = 0;
        assert!(err_of(v, off[0]).contains("sentinel"));

        let mut v = good.clone();
        v[o + 4] = 99;
        assert!(err_of(v, off[0]).contains("unknown dtype code 99"));

        let mut v = good.clone();
        v[o + 8..o + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(err_of(v, off[0]).contains("run past the end"));

        let mut v = good.clone();
        v[o + 16..o + 24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(err_of(v, off[0]).contains("run past the end"));

        let mut v = good.clone();
        v[o + 16..o + 24].copy_from_slice(&(off[0]).to_le_bytes());
        assert!(err_of(v, off[0]).contains("overlaps its own metadata"));

        let truncated = good[..good.len() - 1].to_vec();
        assert!(err_of(truncated, off[0]).contains("run past the end"));

        // fp32 data whose length is not a multiple of 4 bytes.
        let (odd, off2) = build(&[(2, &[1, 2, 3], 0)]);
        assert!(err_of(odd, off2[0]).contains("whole number"));

        // Padding on a byte-sized type.
        let mut v = good.clone();
        v[o + 24] = 4;
        assert!(err_of(v, off[0]).contains("padding"));
    }
}
