//! `constexpr_*` ops (iOS16 opset): compressed weights decompressed once, at
//! plan build time, into ordinary constants. Semantics follow coremltools'
//! `ops/defs/iOS16/constexpr_ops.py`.

use half::f16;

use super::value::{Decoded, HostData};
use super::OpCtx;
use crate::error::Result;
use crate::milblob::unpack_bits;
use crate::tensor::checked_numel;

const OPS: [&str; 3] = [
    "constexpr_affine_dequantize",
    "constexpr_lut_to_dense",
    "constexpr_sparse_to_dense",
];

/// Whether `op_type` is a constexpr op this module materialises.
pub fn is_constexpr(op_type: &str) -> bool {
    OPS.contains(&op_type)
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
