//! `constexpr_*` ops (iOS16 opset): compressed weights decompressed once, at
//! plan build time, into ordinary constants. Semantics follow coremltools'
//! `ops/defs/iOS16/constexpr_ops.py`.

use half::f16;

use candle_core::{DType as CDType, Tensor as CTensor};
use coreml_proto::proto::mil_spec::{self, DataType};

use super::value::{Decoded, HostData};
use super::weights::{Store, Weights};
use super::{OpCtx, Val};
use crate::error::{Error, Result};
use crate::milblob::unpack_bits;
use crate::tensor::checked_numel;

const OPS: [&str; 3] = [
    "constexpr_affine_dequantize",
    "constexpr_lut_to_dense",
    "constexpr_sparse_to_dense",
];

/// Whether `op_type` is a constexpr op this module materialises.
pub fn is_constexpr(op_type: &str) -> bool {
    OPS.contains(&op_type) || OPS_IOS18.contains(&op_type)
}

fn required(ctx: &mut OpCtx, arg: &str) -> Result<Decoded> {
    ctx.opt_const(arg)?
        .ok_or_else(|| ctx.error(format!("required argument `{arg}` is missing")))
}

/// Output values of dtype `like` (fp16 outputs are rounded to fp16, as the
/// runtime would store them).
fn typed(values: Vec<f32>, like: &Decoded, shape: Vec<usize>) -> Decoded {
    let data = match &like.data {
        HostData::F16(_) => HostData::F16(values.into_iter().map(f16::from_f32).collect()),
        HostData::I64(_) => HostData::I64(values.into_iter().map(|v| v as i64).collect()),
        _ => HostData::F32(values),
    };
    Decoded {
        dtype: like.dtype,
        shape,
        data,
    }
}

fn shape_of(ctx: &OpCtx, d: &Decoded) -> Result<(Vec<usize>, usize)> {
    let shape: Vec<usize> = d
        .data
        .to_f64()
        .ok_or_else(|| ctx.error("`shape` is not numeric"))?
        .into_iter()
        .map(|x| x as usize)
        .collect();
    let n = checked_numel(&shape).ok_or_else(|| ctx.error(format!("shape {shape:?} overflows")))?;
    // The output is decoded as f32 plus one index byte an element.
    super::limits::ensure(
        &format!("op `{}` ({}) output of shape {shape:?}", ctx.name, ctx.op.r#type),
        (n as u64).checked_mul(5),
    )?;
    Ok((shape, n))
}

fn bytes_of(ctx: &OpCtx, d: &Decoded, arg: &str) -> Result<Vec<u8>> {
    match &d.data {
        HostData::I64(v) => Ok(v.iter().map(|&x| x as u8).collect()),
        _ => Err(ctx.error(format!("`{arg}` must be uint8 bytes"))),
    }
}

/// Decompresses the op's constant inputs into its output constant.
pub fn materialize(ctx: &mut OpCtx) -> Result<Decoded> {
    match ctx.op.r#type.as_str() {
        "constexpr_affine_dequantize" => affine_dequantize(ctx),
        "constexpr_lut_to_dense" => lut_to_dense(ctx),
        "constexpr_sparse_to_dense" => sparse_to_dense(ctx),
        other => Err(ctx.unsupported(format!("constexpr op `{other}`"))),
    }
}

/// The iOS16 `constexpr_affine_dequantize` and `constexpr_lut_to_dense`
/// outputs as weights kept compressed (`weights::Weights`: 1 byte, or
/// `nbits / 8`, an element instead of 4) when their output is computed in
/// f32 and their data lives in a weight file; `None` otherwise (the op is
/// then materialised densely). Kernels that read weights (`linear`, `conv`,
/// `gather`) decompress a block at a time; any other reader gets the dense
/// tensor, built when first asked for.
pub fn pack(ctx: &mut OpCtx) -> Result<Option<Weights>> {
    let out_dtype = match ctx
        .op
        .outputs
        .first()
        .and_then(|o| o.r#type.as_ref())
        .and_then(|t| t.r#type.as_ref())
    {
        Some(mil_spec::value_type::Type::TensorType(t)) => t.data_type,
        _ => return Ok(None),
    };
    if super::compute_dtype(out_dtype, ctx.policy) != Some(CDType::F32) {
        return Ok(None);
    }
    let f16_values = out_dtype == DataType::Float16 as i32;
    match ctx.op.r#type.as_str() {
        "constexpr_affine_dequantize" => {
            let Some((q, shape, signed)) = ctx.raw_bytes_attr("quantized_data")? else {
                return Ok(None);
            };
            let zp = required(ctx, "zero_point")?;
            let scale = required(ctx, "scale")?;
            let axis = ctx.opt_int("axis")?.unwrap_or(0);
            let rank = shape.len() as i64;
            if axis < -rank || axis >= rank {
                return Err(ctx.error(format!("axis {axis} outside the data's rank {rank}")));
            }
            let axis = if axis < 0 { axis + rank } else { axis } as usize;
            let dim = shape[axis];
            let inner: usize = shape[axis + 1..].iter().product();
            let zero = zp.data.to_f32().ok_or_else(|| ctx.error("zero_point is not numeric"))?;
            let scale = scale.data.to_f32().ok_or_else(|| ctx.error("scale is not numeric"))?;
            for (name, v) in [("zero_point", &zero), ("scale", &scale)] {
                if v.len() != 1 && v.len() != dim {
                    return Err(ctx.error(format!(
                        "`{name}` has {} values; expected 1 or {dim} (the size of axis {axis})",
                        v.len()
                    )));
                }
            }
            let store = Store::Affine {
                q,
                signed,
                scale,
                zero,
                dim,
                inner,
            };
            Weights::new(shape, store, f16_values)
                .map(Some)
                .map_err(|e| ctx.error(e.to_string()))
        }
        "constexpr_lut_to_dense" if ctx.op.attributes.contains_key("shape") => {
            let lut = required(ctx, "lut")?;
            if lut.shape.len() != 1 {
                return Ok(None);
            }
            let nbits = match lut.shape[0] {
                2 => 1,
                4 => 2,
                16 => 4,
                64 => 6,
                256 => 8,
                n => return Err(ctx.error(format!("look-up table has {n} entries; expected 2, 4, 16, 64 or 256"))),
            };
            let Some((packed, _, signed)) = ctx.raw_bytes_attr("indices")? else {
                return Ok(None);
            };
            if signed {
                return Err(ctx.error("`indices` must be uint8 bytes"));
            }
            let shape = required(ctx, "shape")?;
            let (out_shape, n) = shape_of(ctx, &shape)?;
            let need = n
                .checked_mul(nbits as usize)
                .ok_or_else(|| ctx.error(format!("{n} {nbits}-bit indices overflow")))?
                .div_ceil(8);
            if packed.len() != need || out_shape.is_empty() {
                return Err(ctx.error(format!(
                    "indices hold {} bytes; {need} expected for {n} {nbits}-bit indices",
                    packed.len()
                )));
            }
            let table = lut.data.to_f32().ok_or_else(|| ctx.error("lut is not numeric"))?;
            Weights::new(out_shape, Store::Lut { packed, nbits, table }, f16_values)
                .map(Some)
                .map_err(|e| ctx.error(e.to_string()))
        }
        _ => Ok(None),
    }
}

fn affine_dequantize(ctx: &mut OpCtx) -> Result<Decoded> {
    let q = required(ctx, "quantized_data")?;
    let zp = required(ctx, "zero_point")?;
    let scale = required(ctx, "scale")?;
    let axis = ctx.opt_int("axis")?.unwrap_or(0);
    let rank = q.shape.len() as i64;
    if axis < -rank || axis >= rank {
        return Err(ctx.error(format!("axis {axis} outside the data's rank {rank}")));
    }
    let axis = if axis < 0 { axis + rank } else { axis } as usize;
    let dim = q.shape[axis];
    // Saturating: with a zero dim elsewhere there are no elements anyway.
    let inner: usize = q.shape[axis + 1..].iter().fold(1usize, |a, &d| a.saturating_mul(d));
    let qv = q
        .data
        .to_f32()
        .ok_or_else(|| ctx.error("quantized_data is not numeric"))?;
    let zv = zp.data.to_f32().ok_or_else(|| ctx.error("zero_point is not numeric"))?;
    let sv = scale.data.to_f32().ok_or_else(|| ctx.error("scale is not numeric"))?;
    for (name, v) in [("zero_point", &zv), ("scale", &sv)] {
        if v.len() != 1 && v.len() != dim {
            return Err(ctx.error(format!(
                "`{name}` has {} values; expected 1 or {dim} (the size of axis {axis})",
                v.len()
            )));
        }
    }
    let pick = |v: &[f32], c: usize| if v.len() == 1 { v[0] } else { v[c] };
    let out: Vec<f32> = qv
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let c = (i / inner.max(1)) % dim.max(1);
            (x - pick(&zv, c)) * pick(&sv, c)
        })
        .collect();
    Ok(typed(out, &scale, q.shape.clone()))
}

fn lut_to_dense(ctx: &mut OpCtx) -> Result<Decoded> {
    let indices = required(ctx, "indices")?;
    let lut = required(ctx, "lut")?;
    let shape = required(ctx, "shape")?;
    if lut.shape.len() != 1 {
        return Err(ctx.unsupported(format!(
            "a look-up table of shape {:?} (only the iOS16 form, a vector of 2, 4, 16, 64 or 256 entries)",
            lut.shape
        )));
    }
    let entries = lut.shape[0];
    let nbits = match entries {
        2 => 1,
        4 => 2,
        16 => 4,
        64 => 6,
        256 => 8,
        n => return Err(ctx.error(format!("look-up table has {n} entries; expected 2, 4, 16, 64 or 256"))),
    };
    let (out_shape, n) = shape_of(ctx, &shape)?;
    let packed = bytes_of(ctx, &indices, "indices")?;
    let need = n
        .checked_mul(nbits as usize)
        .ok_or_else(|| ctx.error(format!("{n} {nbits}-bit indices overflow")))?
        .div_ceil(8);
    if packed.len() != need {
        return Err(ctx.error(format!(
            "indices hold {} bytes; {need} expected for {n} {nbits}-bit indices",
            packed.len()
        )));
    }
    let idx = unpack_bits(&packed, nbits, n);
    let table = lut.data.to_f32().ok_or_else(|| ctx.error("lut is not numeric"))?;
    let out: Vec<f32> = idx.into_iter().map(|i| table[i as usize]).collect();
    Ok(typed(out, &lut, out_shape))
}

fn sparse_to_dense(ctx: &mut OpCtx) -> Result<Decoded> {
    let data = required(ctx, "nonzero_data")?;
    let mask = required(ctx, "mask")?;
    let shape = required(ctx, "shape")?;
    let (out_shape, n) = shape_of(ctx, &shape)?;
    let packed = bytes_of(ctx, &mask, "mask")?;
    if packed.len() != n.div_ceil(8) {
        return Err(ctx.error(format!(
            "mask holds {} bytes; {} expected for {n} elements",
            packed.len(),
            n.div_ceil(8)
        )));
    }
    let bits = unpack_bits(&packed, 1, n);
    let values = data
        .data
        .to_f32()
        .ok_or_else(|| ctx.error("nonzero_data is not numeric"))?;
    let set = bits.iter().filter(|&&b| b == 1).count();
    if set != values.len() {
        return Err(ctx.error(format!(
            "mask sets {set} bits but nonzero_data has {} values",
            values.len()
        )));
    }
    let mut it = values.into_iter();
    let out: Vec<f32> = bits
        .into_iter()
        .map(|b| if b == 1 { it.next().unwrap_or(0.0) } else { 0.0 })
        .collect();
    Ok(typed(out, &data, out_shape))
}

// ---------------------------------------------------------------------------
// The iOS18 compression family (`ops/defs/iOS18/compression.py`) and
// `constexpr_cast`. These take their parameters as inputs (bound to values or
// to other constexpr outputs, which may be too large to keep a host copy),
// and two of them have two outputs (a mask and the nonzero values).
// ---------------------------------------------------------------------------

/// Constexpr op types of the iOS18 family (and `constexpr_cast`, iOS16 and
/// iOS18) that [`materialize_outputs`] handles beyond [`OPS`].
const OPS_IOS18: [&str; 4] = [
    "constexpr_blockwise_shift_scale",
    "constexpr_lut_to_sparse",
    "constexpr_sparse_blockwise_shift_scale",
    "constexpr_cast",
];

/// Decompresses the op's constant inputs into its output constants, one per
/// output of the op (two for the sparse-to-sparse ops: mask, nonzero values).
/// Costs one pass over the decompressed elements.
pub fn materialize_outputs(ctx: &mut OpCtx) -> Result<Vec<Decoded>> {
    let has_shape = ctx.op.inputs.contains_key("shape") || ctx.op.attributes.contains_key("shape");
    match ctx.op.r#type.as_str() {
        "constexpr_lut_to_dense" if !has_shape => lut_to_dense_ios18(ctx).map(|d| vec![d]),
        "constexpr_sparse_to_dense" if !has_shape => sparse_to_dense_ios18(ctx).map(|d| vec![d]),
        "constexpr_blockwise_shift_scale" => blockwise_shift_scale(ctx).map(|d| vec![d]),
        "constexpr_lut_to_sparse" => lut_to_sparse(ctx),
        "constexpr_sparse_blockwise_shift_scale" => sparse_blockwise_shift_scale(ctx),
        "constexpr_cast" => cast(ctx).map(|d| vec![d]),
        _ => materialize(ctx).map(|d| vec![d]),
    }
}

/// A malformed compressed constant: the package is wrong, not our support.
fn invalid(ctx: &OpCtx, msg: impl std::fmt::Display) -> Error {
    ctx.invalid(msg.to_string())
}

/// A constant argument's host value; constants too large for the plan's host
/// copy (e.g. the output of an earlier constexpr op) are read back from
/// their tensor.
fn host_arg(ctx: &mut OpCtx, arg: &str) -> Result<Option<Decoded>> {
    match ctx.resolve(arg)? {
        None => Ok(None),
        Some(Val::Slot(_)) => Err(ctx.unsupported(format!(
            "argument `{arg}` is computed at run time; constexpr ops take constants"
        ))),
        Some(Val::Const(c)) => match (&c.host, c.tensor()) {
            (Some(d), _) => Ok(Some(d.clone())),
            (None, Some(t)) => decoded_of(t)
                .map(Some)
                .map_err(|e| ctx.error(format!("argument `{arg}`: {e}"))),
            (None, None) => Err(ctx.error(format!("argument `{arg}` is not a tensor"))),
        },
    }
}

fn host_required(ctx: &mut OpCtx, arg: &str) -> Result<Decoded> {
    host_arg(ctx, arg)?.ok_or_else(|| ctx.error(format!("required argument `{arg}` is missing")))
}

/// A candle constant back on the host (its MIL dtype from the candle dtype).
fn decoded_of(t: &CTensor) -> candle_core::Result<Decoded> {
    let flat = t.flatten_all()?;
    let (dtype, data) = match t.dtype() {
        CDType::F16 => (DataType::Float16, HostData::F16(flat.to_vec1()?)),
        CDType::F32 => (DataType::Float32, HostData::F32(flat.to_vec1()?)),
        CDType::F64 => (DataType::Float64, HostData::F64(flat.to_vec1()?)),
        _ => (DataType::Int64, HostData::I64(flat.to_dtype(CDType::I64)?.to_vec1()?)),
    };
    Ok(Decoded {
        dtype: dtype as i32,
        shape: t.dims().to_vec(),
        data,
    })
}

/// Integer values of an index or mask argument.
fn int_values<'d>(ctx: &OpCtx, d: &'d Decoded, arg: &str) -> Result<&'d [i64]> {
    match &d.data {
        HostData::I64(v) => Ok(v),
        _ => Err(invalid(
            ctx,
            format!(
                "`{arg}` must hold integers (uint1..uint8); it holds {}",
                dtype_name(d.dtype)
            ),
        )),
    }
}

fn dtype_name(code: i32) -> String {
    DataType::try_from(code)
        .map(|d| d.as_str_name().to_ascii_lowercase())
        .unwrap_or_else(|_| format!("dtype code {code}"))
}

/// Row-major strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Elements of `data` picked by `src` (indices into `data`), same variant.
fn gather(data: &HostData, src: impl Iterator<Item = usize>) -> HostData {
    match data {
        HostData::F32(v) => HostData::F32(src.map(|i| v[i]).collect()),
        HostData::F16(v) => HostData::F16(src.map(|i| v[i]).collect()),
        HostData::F64(v) => HostData::F64(src.map(|i| v[i]).collect()),
        HostData::I64(v) => HostData::I64(src.map(|i| v[i]).collect()),
        HostData::Bool(v) => HostData::Bool(src.map(|i| v[i]).collect()),
        HostData::Str(v) => HostData::Str(src.map(|i| v[i].clone()).collect()),
    }
}

/// The flat index into a per-block parameter of shape `pshape` of the
/// element at flat index `i` of a tensor of shape `shape` (strides
/// `sstrides`), blocks being `shape[d] / pshape[d]` wide along each dim.
fn block_of(i: usize, shape: &[usize], sstrides: &[usize], pshape: &[usize], pstrides: &[usize]) -> usize {
    let mut g = 0usize;
    for d in 0..shape.len() {
        let coord = (i / sstrides[d]) % shape[d];
        let block = shape[d] / pshape[d];
        g += (coord / block) * pstrides[d];
    }
    g
}

/// Checks that `pshape` (a per-block parameter) has `shape`'s rank and that
/// each of its dims is non-zero and divides `shape`'s.
fn check_blocks(ctx: &OpCtx, shape: &[usize], pshape: &[usize], what: &str, of: &str) -> Result<()> {
    if pshape.len() != shape.len() {
        return Err(invalid(
            ctx,
            format!(
                "`{what}` has shape {pshape:?}; expected the rank of `{of}` {shape:?} ({})",
                shape.len()
            ),
        ));
    }
    for (d, (&s, &p)) in shape.iter().zip(pshape).enumerate() {
        if p == 0 || s % p != 0 {
            return Err(invalid(
                ctx,
                format!("`{what}` has {p} blocks along dim {d}, which does not divide {s} (`{of}` {shape:?})"),
            ));
        }
    }
    Ok(())
}

/// iOS18 `constexpr_lut_to_dense`: per-group look-up tables (`lut` of shape
/// `[G0..GK-1, NUM_PALETTES, VECTOR_SIZE]` over `indices` of rank K), each
/// index selecting a vector laid out along `vector_axis`.
fn lut_to_dense_ios18(ctx: &mut OpCtx) -> Result<Decoded> {
    let indices = host_required(ctx, "indices")?;
    let lut = host_required(ctx, "lut")?;
    let vector_axis = ctx.opt_int("vector_axis")?;
    let (shape, data) = lut_expand(
        ctx,
        &indices.shape,
        int_values(ctx, &indices, "indices")?,
        &lut,
        vector_axis,
    )?;
    Ok(Decoded {
        dtype: lut.dtype,
        shape,
        data,
    })
}

/// The dense output (shape, values) of palettized `idx` (shape `ishape`).
fn lut_expand(
    ctx: &OpCtx,
    ishape: &[usize],
    idx: &[i64],
    lut: &Decoded,
    vector_axis: Option<i64>,
) -> Result<(Vec<usize>, HostData)> {
    let k = ishape.len();
    if k == 0 || lut.shape.len() != k + 2 {
        return Err(invalid(
            ctx,
            format!(
                "`lut` has shape {:?}; expected rank {} (the rank of `indices` {ishape:?} plus 2)",
                lut.shape,
                k + 2
            ),
        ));
    }
    let (gshape, palettes, vsize) = (&lut.shape[..k], lut.shape[k], lut.shape[k + 1]);
    check_blocks(ctx, ishape, gshape, "lut", "indices")?;
    if palettes == 0 || vsize == 0 {
        return Err(invalid(
            ctx,
            format!("`lut` has shape {:?}, with an empty palette", lut.shape),
        ));
    }
    let va = match vector_axis {
        Some(a) if a < -(k as i64) || a >= k as i64 => {
            return Err(invalid(
                ctx,
                format!("`vector_axis` {a} is outside the rank {k} of `indices`"),
            ))
        }
        Some(a) => Some(if a < 0 { a + k as i64 } else { a } as usize),
        None if vsize > 1 => {
            return Err(invalid(
                ctx,
                format!("`lut` holds vectors of {vsize} values but `vector_axis` is missing"),
            ))
        }
        None => None,
    };
    let mut oshape = ishape.to_vec();
    if let Some(a) = va {
        oshape[a] = oshape[a]
            .checked_mul(vsize)
            .ok_or_else(|| invalid(ctx, format!("output dim {a} of {} x {vsize} overflows", ishape[a])))?;
    }
    let n_out = checked_numel(&oshape).ok_or_else(|| invalid(ctx, format!("output shape {oshape:?} overflows")))?;
    let n_idx = checked_numel(ishape).ok_or_else(|| invalid(ctx, format!("indices shape {ishape:?} overflows")))?;
    if idx.len() != n_idx {
        return Err(invalid(
            ctx,
            format!("`indices` holds {} values for shape {ishape:?}", idx.len()),
        ));
    }
    if let Some(&bad) = idx.iter().find(|&&v| v < 0 || v as usize >= palettes) {
        return Err(invalid(
            ctx,
            format!("index {bad} outside a look-up table of {palettes} entries"),
        ));
    }
    let (istr, gstr, ostr) = (strides(ishape), strides(gshape), strides(&oshape));
    // Source (lut flat index) of every output element.
    let mut src = vec![0usize; n_out];
    for (i, &ix) in idx.iter().enumerate() {
        let g = block_of(i, ishape, &istr, gshape, &gstr);
        let base = (g * palettes + ix as usize) * vsize;
        let mut o = 0usize;
        for d in 0..k {
            let c = (i / istr[d]) % ishape[d];
            o += if Some(d) == va { c * vsize } else { c } * ostr[d];
        }
        let step = va.map_or(0, |a| ostr[a]);
        for v in 0..vsize {
            src[o + v * step] = base + v;
        }
    }
    Ok((oshape, gather(&lut.data, src.into_iter())))
}

/// iOS18 `constexpr_sparse_to_dense`: `nonzero_data` scattered, in order, to
/// the set bits of `mask` (uint1, the output's shape); zeros elsewhere.
fn sparse_to_dense_ios18(ctx: &mut OpCtx) -> Result<Decoded> {
    let data = host_required(ctx, "nonzero_data")?;
    let mask = host_required(ctx, "mask")?;
    let bits = int_values(ctx, &mask, "mask")?;
    let data_out = scatter_mask(ctx, bits, &data.data)?;
    Ok(Decoded {
        dtype: data.dtype,
        shape: mask.shape.clone(),
        data: data_out,
    })
}

/// Scatters `values` to the set positions of `bits`, zeros elsewhere.
fn scatter_mask(ctx: &OpCtx, bits: &[i64], values: &HostData) -> Result<HostData> {
    let set = bits.iter().filter(|&&b| b != 0).count();
    if set != values.len() {
        return Err(invalid(
            ctx,
            format!("mask sets {set} bits but the nonzero data has {} values", values.len()),
        ));
    }
    // Index `len` is the zero appended below.
    let zero_at = values.len();
    let mut next = 0usize;
    let src: Vec<usize> = bits
        .iter()
        .map(|&b| {
            if b != 0 {
                next += 1;
                next - 1
            } else {
                zero_at
            }
        })
        .collect();
    let padded = match values {
        HostData::F32(v) => HostData::F32(v.iter().copied().chain([0.0]).collect()),
        HostData::F16(v) => HostData::F16(v.iter().copied().chain([f16::ZERO]).collect()),
        HostData::F64(v) => HostData::F64(v.iter().copied().chain([0.0]).collect()),
        HostData::I64(v) => HostData::I64(v.iter().copied().chain([0]).collect()),
        HostData::Bool(v) => HostData::Bool(v.iter().copied().chain([false]).collect()),
        HostData::Str(_) => return Err(invalid(ctx, "string nonzero data")),
    };
    Ok(gather(&padded, src.into_iter()))
}

/// The per-block scale and optional offset of a shift-scale op, checked
/// against the (dense) data shape.
fn shift_scale_params(ctx: &mut OpCtx, shape: &[usize]) -> Result<(Decoded, Option<Vec<f64>>, Vec<f64>)> {
    let scale = host_required(ctx, "scale")?;
    let offset = host_arg(ctx, "offset")?;
    check_blocks(ctx, shape, &scale.shape, "scale", "data")?;
    let off = match offset {
        Some(o) => {
            if o.shape != scale.shape {
                return Err(invalid(
                    ctx,
                    format!(
                        "`offset` has shape {:?}; expected the shape of `scale` {:?}",
                        o.shape, scale.shape
                    ),
                ));
            }
            Some(o.data.to_f64().ok_or_else(|| invalid(ctx, "`offset` is not numeric"))?)
        }
        None => None,
    };
    let sv = scale
        .data
        .to_f64()
        .ok_or_else(|| invalid(ctx, "`scale` is not numeric"))?;
    if !matches!(scale.data, HostData::F32(_) | HostData::F16(_)) {
        return Err(invalid(
            ctx,
            format!("`scale` is {}; expected fp16 or fp32", dtype_name(scale.dtype)),
        ));
    }
    Ok((scale, off, sv))
}

/// Values of `like`'s float variant (fp16 rounds once, from f64).
fn floats_like(values: Vec<f64>, like: &Decoded) -> HostData {
    match like.data {
        HostData::F16(_) => HostData::F16(values.into_iter().map(f16::from_f64).collect()),
        _ => HostData::F32(values.into_iter().map(|v| v as f32).collect()),
    }
}

/// `constexpr_blockwise_shift_scale`: `scale * (data - offset)`, `scale` and
/// `offset` repeated over blocks of `data.shape / scale.shape`.
fn blockwise_shift_scale(ctx: &mut OpCtx) -> Result<Decoded> {
    let data = host_required(ctx, "data")?;
    let shape = data.shape.clone();
    let (scale, off, sv) = shift_scale_params(ctx, &shape)?;
    let dv = data
        .data
        .to_f64()
        .ok_or_else(|| invalid(ctx, "`data` is not numeric"))?;
    let (sstr, pstr) = (strides(&shape), strides(&scale.shape));
    let out: Vec<f64> = dv
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let g = block_of(i, &shape, &sstr, &scale.shape, &pstr);
            sv[g] * (x - off.as_ref().map_or(0.0, |o| o[g]))
        })
        .collect();
    Ok(Decoded {
        dtype: scale.dtype,
        shape,
        data: floats_like(out, &scale),
    })
}

/// A uint1 mask constant.
fn mask_of(shape: Vec<usize>, bits: Vec<i64>) -> Decoded {
    Decoded {
        dtype: DataType::Uint1 as i32,
        shape,
        data: HostData::I64(bits),
    }
}

/// `constexpr_lut_to_sparse`: the palettized nonzero indices looked up;
/// outputs the mask (expanded along `vector_axis` for vector palettes) and
/// the looked-up values at its set bits, in row-major order.
fn lut_to_sparse(ctx: &mut OpCtx) -> Result<Vec<Decoded>> {
    let mask = host_required(ctx, "indices_mask")?;
    let nz = host_required(ctx, "indices_nonzero_data")?;
    let lut = host_required(ctx, "lut")?;
    let vector_axis = ctx.opt_int("vector_axis")?;
    let bits = int_values(ctx, &mask, "indices_mask")?.to_vec();
    let dense_idx = match scatter_mask(ctx, &bits, &nz.data)? {
        HostData::I64(v) => v,
        _ => return Err(invalid(ctx, "`indices_nonzero_data` must hold integers")),
    };
    let (oshape, values) = lut_expand(ctx, &mask.shape, &dense_idx, &lut, vector_axis)?;
    // The mask expanded like the values (vector_axis normalised by lut_expand).
    let out_mask = match vector_axis {
        Some(a) => {
            let k = mask.shape.len() as i64;
            let a = if a < 0 { a + k } else { a } as usize;
            let vsize = oshape[a] / mask.shape[a].max(1);
            let (istr, ostr) = (strides(&mask.shape), strides(&oshape));
            let mut m = vec![0i64; values.len()];
            for (i, &b) in bits.iter().enumerate() {
                let mut o = 0usize;
                for d in 0..mask.shape.len() {
                    let c = (i / istr[d]) % mask.shape[d];
                    o += if d == a { c * vsize } else { c } * ostr[d];
                }
                for v in 0..vsize {
                    m[o + v * ostr[a]] = b;
                }
            }
            m
        }
        None => bits,
    };
    let keep: Vec<usize> = (0..out_mask.len()).filter(|&i| out_mask[i] != 0).collect();
    let n = keep.len();
    let nonzero = Decoded {
        dtype: lut.dtype,
        shape: vec![n],
        data: gather(&values, keep.into_iter()),
    };
    Ok(vec![mask_of(oshape, out_mask), nonzero])
}

/// `constexpr_sparse_blockwise_shift_scale`: `scale * (nonzero - offset)`,
/// each nonzero value taking the block of its position in `data_mask`;
/// outputs the mask unchanged and the dequantized values.
fn sparse_blockwise_shift_scale(ctx: &mut OpCtx) -> Result<Vec<Decoded>> {
    let mask = host_required(ctx, "data_mask")?;
    let nz = host_required(ctx, "nonzero_data")?;
    let shape = mask.shape.clone();
    let (scale, off, sv) = shift_scale_params(ctx, &shape)?;
    let bits = int_values(ctx, &mask, "data_mask")?;
    let vals = nz
        .data
        .to_f64()
        .ok_or_else(|| invalid(ctx, "`nonzero_data` is not numeric"))?;
    let set = bits.iter().filter(|&&b| b != 0).count();
    if set != vals.len() {
        return Err(invalid(
            ctx,
            format!(
                "`data_mask` sets {set} bits but `nonzero_data` has {} values",
                vals.len()
            ),
        ));
    }
    let (sstr, pstr) = (strides(&shape), strides(&scale.shape));
    let mut it = vals.into_iter();
    let mut out = Vec::with_capacity(set);
    for (i, &b) in bits.iter().enumerate() {
        if b != 0 {
            let g = block_of(i, &shape, &sstr, &scale.shape, &pstr);
            let x = it.next().unwrap_or(0.0);
            out.push(sv[g] * (x - off.as_ref().map_or(0.0, |o| o[g])));
        }
    }
    let nonzero = Decoded {
        dtype: scale.dtype,
        shape: vec![set],
        data: floats_like(out, &scale),
    };
    Ok(vec![mask_of(shape, bits.to_vec()), nonzero])
}

/// `constexpr_cast`: fp16 `source_val` to `output_dtype` (fp32 is the only
/// one coremltools defines).
fn cast(ctx: &mut OpCtx) -> Result<Decoded> {
    let src = host_required(ctx, "source_val")?;
    let dtype = ctx.opt_string("output_dtype")?.unwrap_or_default();
    if dtype != "fp32" {
        return Err(ctx.unsupported(format!("parameter `output_dtype` = `{dtype}`; expected fp32")));
    }
    let v = src
        .data
        .to_f32()
        .ok_or_else(|| invalid(ctx, "`source_val` is not numeric"))?;
    Ok(Decoded {
        dtype: DataType::Float32 as i32,
        shape: src.shape,
        data: HostData::F32(v),
    })
}
