//! Constant weight matrices kept in their stored form: dense f32, f16, or
//! compressed (affine-quantized 8-bit, palettized n-bit), read as f32 a
//! block of rows at a time ([`Weights::rows_f32`]) by the kernels that take
//! them (`linear`, `conv`, `gather`). Memory: the stored bytes (2 bytes an
//! element for f16, 1 for int8, `nbits / 8` plus the table for a palette)
//! instead of 4; time: one conversion pass over the rows a kernel reads, on
//! every call.

use std::ops::Range;

use candle_core::{DType as CDType, Device, Tensor as CTensor};
use half::f16;
use half::slice::HalfFloatSliceExt;

type CResult<T> = candle_core::Result<T>;

/// How the elements are stored.
pub(crate) enum Store {
    /// Dense f32, contiguous (kernels read it in place).
    Dense(CTensor),
    /// A tensor of another dtype (integers), kept as it is; read as f32.
    Other(CTensor),
    /// IEEE half floats.
    F16(Vec<f16>),
    /// `(q - zero[c]) · scale[c]`, `c` the element's index along the
    /// quantization axis (one scale and zero point, or one per index).
    Affine {
        q: Vec<u8>,
        signed: bool,
        scale: Vec<f32>,
        zero: Vec<f32>,
        /// Size of the quantization axis.
        dim: usize,
        /// Elements after the axis (the stride of one step along it).
        inner: usize,
    },
    /// `table[index]`, indices of `nbits` (1-8) packed LSB first.
    Lut {
        packed: Vec<u8>,
        nbits: u32,
        table: Vec<f32>,
    },
}

/// A constant matrix (any rank >= 1; a "row" is one index of the first dim).
pub(crate) struct Weights {
    shape: Vec<usize>,
    store: Store,
    /// The constant's MIL dtype is fp16: computed values are rounded to
    /// fp16, as the dense constant would hold them.
    f16_values: bool,
}

impl Weights {
    /// Wraps a stored form; `shape` must hold exactly the stored elements
    /// (checked by the constructors' callers against the program).
    pub(crate) fn new(shape: Vec<usize>, store: Store, f16_values: bool) -> CResult<Weights> {
        let n: usize = shape.iter().product();
        let held = match &store {
            Store::Dense(t) | Store::Other(t) => t.elem_count(),
            Store::F16(v) => v.len(),
            Store::Affine {
                q,
                scale,
                zero,
                dim,
                inner,
                ..
            } => {
                for (name, v) in [("scale", scale), ("zero point", zero)] {
                    if v.len() != 1 && v.len() != *dim {
                        candle_core::bail!("{} {name} values for an axis of {dim}", v.len())
                    }
                }
                if *inner == 0 && n > 0 {
                    candle_core::bail!("a quantization axis with no elements after it")
                }
                q.len()
            }
            Store::Lut { packed, nbits, table } => {
                if !(1..=8).contains(nbits) || table.len() < (1usize << nbits) {
                    candle_core::bail!("a look-up table of {} entries for {nbits}-bit indices", table.len())
                }
                if packed.len() != (n * *nbits as usize).div_ceil(8) {
                    candle_core::bail!("{} bytes of {nbits}-bit indices for {n} elements", packed.len())
                }
                n
            }
        };
        if shape.is_empty() || held != n {
            candle_core::bail!("{held} stored elements for a weight of shape {shape:?}")
        }
        Ok(Weights {
            shape,
            store,
            f16_values,
        })
    }

    /// A dense tensor as weights (no copy of a contiguous one): f32 is read
    /// in place, other dtypes are converted as they are read.
    pub(crate) fn dense(t: CTensor) -> CResult<Weights> {
        let t = t.contiguous()?;
        let store = if t.dtype() == CDType::F32 {
            Store::Dense(t.clone())
        } else {
            Store::Other(t.clone())
        };
        Weights::new(t.dims().to_vec(), store, false)
    }

    /// The stored form (a lowered program writes a compressed one back as
    /// the constexpr op that produced it).
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Whether the stored form is compressed (affine 8-bit or a palette).
    pub(crate) fn is_compressed(&self) -> bool {
        matches!(self.store, Store::Affine { .. } | Store::Lut { .. })
    }

    /// Whether the constant's MIL dtype is fp16 (computed values are
    /// rounded to fp16).
    pub(crate) fn f16_values(&self) -> bool {
        self.f16_values
    }

    /// The dims.
    pub(crate) fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Elements of one row (the product of the dims after the first).
    pub(crate) fn row_len(&self) -> usize {
        self.shape[1..].iter().product()
    }

    /// Bytes the stored form holds.
    pub(crate) fn bytes(&self) -> usize {
        match &self.store {
            Store::Dense(t) | Store::Other(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Store::F16(v) => v.len() * 2,
            Store::Affine { q, scale, zero, .. } => q.len() + 4 * (scale.len() + zero.len()),
            Store::Lut { packed, table, .. } => packed.len() + 4 * table.len(),
        }
    }

    /// The dense f32 tensor when that is how the weights are stored.
    pub(crate) fn as_dense(&self) -> Option<&CTensor> {
        match &self.store {
            Store::Dense(t) => Some(t),
            _ => None,
        }
    }

    /// Writes rows `rows` (of the first dim) as f32 into `out`, which must
    /// hold `rows.len() · row_len()` values. Costs one pass over them.
    pub(crate) fn rows_f32(&self, rows: Range<usize>, out: &mut [f32]) -> CResult<()> {
        let rl = self.row_len();
        if rows.start > rows.end || rows.end > self.shape[0] || out.len() != rows.len() * rl {
            candle_core::bail!(
                "rows {rows:?} of a weight of shape {:?} into {} values",
                self.shape,
                out.len()
            )
        }
        let (from, to) = (rows.start * rl, rows.end * rl);
        match &self.store {
            Store::Dense(t) | Store::Other(t) => {
                let flat = t.flatten_all()?.narrow(0, from, to - from)?.to_dtype(CDType::F32)?;
                out.copy_from_slice(&flat.to_vec1::<f32>()?);
            }
            Store::F16(v) => v[from..to].convert_to_f32_slice(out),
            Store::Affine {
                q,
                signed,
                scale,
                zero,
                dim,
                inner,
            } => {
                let pick = |v: &[f32], c: usize| if v.len() == 1 { v[0] } else { v[c] };
                // Runs of `inner` elements share one channel (scale, zero point).
                let mut i = from;
                while i < to {
                    let c = (i / inner) % dim;
                    let end = ((i / inner + 1) * inner).min(to);
                    let (s, z) = (pick(scale, c), pick(zero, c));
                    let (src, dst) = (&q[i..end], &mut out[i - from..end - from]);
                    if *signed {
                        for (o, &x) in dst.iter_mut().zip(src) {
                            *o = (x as i8 as f32 - z) * s;
                        }
                    } else {
                        for (o, &x) in dst.iter_mut().zip(src) {
                            *o = (x as f32 - z) * s;
                        }
                    }
                    i = end;
                }
                if self.f16_values {
                    round_to_f16(out);
                }
            }
            Store::Lut { packed, nbits, table } => match nbits {
                8 => {
                    for (o, &ix) in out.iter_mut().zip(&packed[from..to]) {
                        *o = table[ix as usize];
                    }
                }
                _ => {
                    let nb = *nbits as usize;
                    let mask = (1u16 << nb) - 1;
                    for (k, o) in out.iter_mut().enumerate() {
                        let bit = (from + k) * nb;
                        let (byte, shift) = (bit / 8, bit % 8);
                        let lo = packed[byte] as u16;
                        let hi = packed.get(byte + 1).copied().unwrap_or(0) as u16;
                        let ix = ((lo | hi << 8) >> shift) & mask;
                        *o = table[ix as usize];
                    }
                }
            },
        }
        Ok(())
    }

    /// The whole constant as a dense tensor: f32 (a new copy unless it is
    /// stored dense; costs one pass and 4 bytes an element), or the tensor
    /// of another dtype as it is stored.
    pub(crate) fn to_tensor(&self) -> CResult<CTensor> {
        if let Store::Dense(t) | Store::Other(t) = &self.store {
            return Ok(t.clone());
        }
        super::limits::check_alloc("dense weight", &self.shape, 4)?;
        let mut v = vec![0f32; self.shape.iter().product()];
        self.rows_f32(0..self.shape[0], &mut v)?;
        CTensor::from_vec(v, self.shape.clone(), &Device::Cpu)
    }

    /// The constant in the dtype the program declares (f16 stays f16), for
    /// a lowered program.
    pub(crate) fn to_stored_tensor(&self) -> CResult<CTensor> {
        match &self.store {
            Store::F16(v) => CTensor::from_slice(v, self.shape.clone(), &Device::Cpu),
            _ if self.f16_values => self.to_tensor()?.to_dtype(CDType::F16),
            _ => self.to_tensor(),
        }
    }
}

/// Rounds every value to the nearest f16 (as an fp16 constant holds it),
/// through a small buffer with half's vectorised slice conversions.
fn round_to_f16(v: &mut [f32]) {
    let mut buf = [f16::ZERO; 256];
    for chunk in v.chunks_mut(256) {
        let b = &mut buf[..chunk.len()];
        b.convert_from_f32_slice(chunk);
        b.convert_to_f32_slice(chunk);
    }
}

/// Rows of `w` per block for a product that reads `w` one block of rows at
/// a time: about 128 Ki values (512 KiB of f32 scratch, which stays in L2
/// while the product reads it), at least 16 rows.
pub(crate) fn block_rows(w: &Weights) -> usize {
    ((128 << 10) / w.row_len().max(1)).max(16)
}

thread_local! {
    /// Per-thread scratch for converted weight rows (grown, never shrunk:
    /// bounded by the largest block any kernel asks for).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Calls `f` with rows `rows` of `w` as f32: in place when `w` is dense,
/// else converted into this thread's scratch buffer (reused across calls).
pub(crate) fn with_rows<R>(w: &Weights, rows: Range<usize>, f: impl FnOnce(&[f32]) -> CResult<R>) -> CResult<R> {
    if let Store::Dense(t) = &w.store {
        let rl = w.row_len();
        return super::depthwise::with_f32_slice(t, |s| f(&s[rows.start * rl..rows.end * rl]))?;
    }
    let n = rows.len() * w.row_len();
    // Taken out of the cell while `f` runs, so a nested call gets its own.
    let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if buf.len() < n {
        buf.resize(n, 0.0);
    }
    let r = w.rows_f32(rows, &mut buf[..n]).and_then(|_| f(&buf[..n]));
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.capacity() < buf.capacity() {
            *s = buf;
        }
    });
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::milblob::unpack_bits;

    #[test]
    fn every_store_reads_rows_like_its_dense_values() {
        // f16: exact conversion.
        let h: Vec<f16> = (0..12).map(|i| f16::from_f32(i as f32 * 0.5 - 2.0)).collect();
        let w = Weights::new(vec![3, 4], Store::F16(h.clone()), true).unwrap();
        let mut out = vec![0f32; 8];
        w.rows_f32(1..3, &mut out).unwrap();
        let want: Vec<f32> = h[4..].iter().map(|x| x.to_f32()).collect();
        assert_eq!(out, want);

        // Affine, per channel along axis 0 of [2, 3], int8 and uint8 (numpy's
        // (q - zp) * scale, written out by hand).
        let q: Vec<u8> = [-3i8, 0, 5, 127, -128, 1].iter().map(|&v| v as u8).collect();
        let w = Weights::new(
            vec![2, 3],
            Store::Affine {
                q,
                signed: true,
                scale: vec![0.5, 2.0],
                zero: vec![1.0, -1.0],
                dim: 2,
                inner: 3,
            },
            false,
        )
        .unwrap();
        let mut out = vec![0f32; 6];
        w.rows_f32(0..2, &mut out).unwrap();
        assert_eq!(out, vec![-2.0, -0.5, 2.0, 256.0, -254.0, 4.0]);
        // Along the last axis of [2, 3] (inner 1): the channel changes every element.
        let w = Weights::new(
            vec![2, 3],
            Store::Affine {
                q: vec![10, 20, 30, 40, 50, 60],
                signed: false,
                scale: vec![1.0, 0.1, 0.01],
                zero: vec![0.0],
                dim: 3,
                inner: 1,
            },
            true,
        )
        .unwrap();
        let mut out = vec![0f32; 3];
        w.rows_f32(1..2, &mut out).unwrap();
        let want: Vec<f32> = [40.0f32, 5.0, 0.6].iter().map(|&v| f16::from_f32(v).to_f32()).collect();
        assert_eq!(out, want);

        // Palettes of every width against milblob's own unpacking.
        for nbits in 1..=8u32 {
            let n = 7 * 5;
            let packed: Vec<u8> = (0..(n * nbits as usize).div_ceil(8))
                .map(|i| (i * 73 + 11) as u8)
                .collect();
            let table: Vec<f32> = (0..1usize << nbits).map(|i| i as f32 * 1.5 - 3.0).collect();
            let idx = unpack_bits(&packed, nbits, n);
            let w = Weights::new(
                vec![7, 5],
                Store::Lut {
                    packed,
                    nbits,
                    table: table.clone(),
                },
                false,
            )
            .unwrap();
            let mut out = vec![0f32; 3 * 5];
            w.rows_f32(2..5, &mut out).unwrap();
            let want: Vec<f32> = idx[10..25].iter().map(|&i| table[i as usize]).collect();
            assert_eq!(out, want, "{nbits}-bit palette");
            let dense = w.to_tensor().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(dense[10..25], want[..]);
        }
    }

    #[test]
    fn bad_shapes_and_ranges_are_errors() {
        assert!(Weights::new(vec![2, 3], Store::F16(vec![f16::ZERO; 5]), false).is_err());
        let lut = Store::Lut {
            packed: vec![0; 2],
            nbits: 4,
            table: vec![0.0; 8],
        };
        assert!(Weights::new(vec![4], lut, false).is_err(), "table too short");
        let w = Weights::new(vec![2, 2], Store::F16(vec![f16::ONE; 4]), false).unwrap();
        let mut out = vec![0f32; 4];
        let e = w.rows_f32(1..3, &mut out).unwrap_err().to_string();
        assert!(e.contains("rows 1..3"), "{e}");
    }

    #[test]
    fn with_rows_converts_a_block_into_scratch_and_reads_dense_in_place() {
        let h: Vec<f16> = (0..6).map(|i| f16::from_f32(i as f32)).collect();
        let w = Weights::new(vec![3, 2], Store::F16(h), false).unwrap();
        let got = with_rows(&w, 1..3, |s| Ok(s.to_vec())).unwrap();
        assert_eq!(got, vec![2.0, 3.0, 4.0, 5.0]);
        let t = CTensor::from_vec((0..6).map(|i| i as f32).collect::<Vec<_>>(), (3, 2), &Device::Cpu).unwrap();
        let d = Weights::dense(t).unwrap();
        assert_eq!(with_rows(&d, 0..1, |s| Ok(s.to_vec())).unwrap(), vec![0.0, 1.0]);
    }
}
