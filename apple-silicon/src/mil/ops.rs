//! Op kernels. Each builder reads an op's parameters once (they must be
//! constants) and returns a kernel closure over its tensor operands.
//! Semantics follow coremltools' op definitions (`ops/defs/iOS15..17`):
//! numpy broadcasting, negative axes counted from the end, `pad` as
//! `[begin, end]` per spatial dimension.

use candle_core::{DType as CDType, Device, Tensor};

use super::{compute_dtype, depthwise, Kernel, OpCtx};
use crate::error::Result;

type Builder = fn(&mut OpCtx) -> Result<Kernel>;
type CResult<T> = candle_core::Result<T>;

/// The builder for `op_type`, if the interpreter implements it.
pub fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        // elementwise unary
        "relu" => |c| unary(c, |x| x.relu()),
        "relu6" => |c| unary(c, |x| clamp(x, 0.0, 6.0)),
        "tanh" => |c| unary(c, |x| x.tanh()),
        "sigmoid" => |c| unary(c, candle_nn::ops::sigmoid),
        "silu" => |c| unary(c, |x| x.silu()),
        "erf" => |c| unary(c, |x| x.erf()),
        "exp" => |c| unary(c, |x| x.exp()),
        "sqrt" => |c| unary(c, |x| x.sqrt()),
        "abs" => |c| unary(c, |x| x.abs()),
        "floor" => |c| unary(c, |x| x.floor()),
        "ceil" => |c| unary(c, |x| x.ceil()),
        "round" => |c| unary(c, |x| x.round()),
        "sign" => |c| unary(c, |x| x.sign()),
        "sin" => |c| unary(c, |x| x.sin()),
        "cos" => |c| unary(c, |x| x.cos()),
        "square" => |c| unary(c, |x| x.sqr()),
        "identity" => |c| unary(c, |x| Ok(x.clone())),
        "rsqrt" => |c| unary_eps(c, 1e-12, |x, e| x.affine(1.0, e)?.sqrt()?.recip()),
        "inverse" => |c| unary_eps(c, 1e-4, |x, e| x.affine(1.0, e)?.recip()),
        "log" => |c| unary_eps(c, 0.0, |x, e| x.affine(1.0, e)?.log()),
        "gelu" => gelu,
        "leaky_relu" => leaky_relu,
        "clip" => clip,
        "softplus" => |c| unary(c, |x| (x.exp()? + 1.0)?.log()),
        // elementwise binary
        "add" => |c| binary(c, |a, b| a.broadcast_add(b)),
        "sub" => |c| binary(c, |a, b| a.broadcast_sub(b)),
        "mul" => |c| binary(c, |a, b| a.broadcast_mul(b)),
        "real_div" => |c| binary(c, |a, b| a.broadcast_div(b)),
        "floor_div" => |c| binary(c, |a, b| a.broadcast_div(b)?.floor()),
        "maximum" => |c| binary(c, |a, b| a.broadcast_maximum(b)),
        "minimum" => |c| binary(c, |a, b| a.broadcast_minimum(b)),
        "pow" => |c| binary(c, |a, b| a.broadcast_pow(b)),
        "equal" => |c| binary(c, |a, b| a.broadcast_eq(b)),
        "not_equal" => |c| binary(c, |a, b| a.broadcast_ne(b)),
        "less" => |c| binary(c, |a, b| a.broadcast_lt(b)),
        "less_equal" => |c| binary(c, |a, b| a.broadcast_le(b)),
        "greater" => |c| binary(c, |a, b| a.broadcast_gt(b)),
        "greater_equal" => |c| binary(c, |a, b| a.broadcast_ge(b)),
        "logical_and" => |c| binary(c, |a, b| a.broadcast_mul(b)?.ne(0u8)),
        "logical_or" => |c| binary(c, |a, b| a.broadcast_add(b)?.ne(0u8)),
        "logical_not" => |c| unary(c, |x| x.eq(0u8)),
        "select" => select,
        "cast" => cast,
        // linear algebra and nn
        "linear" => linear,
        "matmul" => matmul,
        "conv" => conv,
        "max_pool" => |c| pool(c, PoolKind::Max),
        "avg_pool" => |c| pool(c, PoolKind::Avg),
        "batch_norm" => batch_norm,
        "layer_norm" => layer_norm,
        "softmax" => softmax,
        "reduce_mean" => |c| reduce(c, Reduce::Mean),
        "reduce_sum" => |c| reduce(c, Reduce::Sum),
        "reduce_max" => |c| reduce(c, Reduce::Max),
        "reduce_min" => |c| reduce(c, Reduce::Min),
        "reduce_l2_norm" => |c| reduce(c, Reduce::L2),
        "l2_norm" => l2_norm,
        // shapes and data movement
        "reshape" => reshape,
        "transpose" => transpose,
        "expand_dims" => expand_dims,
        "squeeze" => squeeze,
        "concat" => concat,
        "split" => split,
        "slice_by_index" => slice_by_index,
        "gather" => gather,
        "shape" => |c| {
            unary(c, |x| {
                Tensor::new(x.dims().iter().map(|&d| d as i64).collect::<Vec<_>>(), &Device::Cpu)
            })
        },
        "pad" => pad,
        "tile" => tile,
        _ => return None,
    })
}

fn one(t: Tensor) -> CResult<Vec<Tensor>> {
    Ok(vec![t])
}

/// Normalises a possibly negative axis against `rank`.
fn axis_of(axis: i64, rank: usize) -> CResult<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) {
        candle_core::bail!("axis {axis} is outside a tensor of rank {rank}")
    }
    Ok(a as usize)
}

fn unary(c: &mut OpCtx, f: fn(&Tensor) -> CResult<Tensor>) -> Result<Kernel> {
    let x = c.tensor("x")?;
    Ok(Box::new(move |a| one(f(a[x])?)))
}

fn unary_eps(c: &mut OpCtx, default: f64, f: fn(&Tensor, f64) -> CResult<Tensor>) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let eps = c.opt_float("epsilon")?.unwrap_or(default);
    Ok(Box::new(move |a| one(f(a[x], eps)?)))
}

fn binary(c: &mut OpCtx, f: fn(&Tensor, &Tensor) -> CResult<Tensor>) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let y = c.tensor("y")?;
    Ok(Box::new(move |a| {
        let (l, r) = (a[x], a[y]);
        // Comparisons and logic on bools: keep u8; otherwise operands share a dtype.
        if l.dtype() != r.dtype() {
            let r = r.to_dtype(l.dtype())?;
            return one(f(l, &r)?);
        }
        one(f(l, r)?)
    }))
}

fn gelu(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let mode = c.opt_string("mode")?.unwrap_or_else(|| "EXACT".into());
    let f: fn(&Tensor) -> CResult<Tensor> = match mode.as_str() {
        "EXACT" => |x| x.gelu_erf(),
        "TANH_APPROXIMATION" => |x| x.gelu(),
        "SIGMOID_APPROXIMATION" => |x| x.broadcast_mul(&candle_nn::ops::sigmoid(&x.affine(1.702, 0.0)?)?),
        other => {
            return Err(c.error(format!(
                "gelu mode `{other}`; expected EXACT, TANH_APPROXIMATION or SIGMOID_APPROXIMATION"
            )))
        }
    };
    Ok(Box::new(move |a| one(f(a[x])?)))
}

fn leaky_relu(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let alpha = c.opt_float("alpha")?.unwrap_or(0.01);
    Ok(Box::new(move |a| {
        let x = a[x];
        one(x.relu()?.broadcast_sub(&x.neg()?.relu()?.affine(alpha, 0.0)?)?)
    }))
}

fn clip(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let lo = c.opt_float("alpha")?.ok_or_else(|| c.error("`alpha` is required"))?;
    let hi = c.opt_float("beta")?.ok_or_else(|| c.error("`beta` is required"))?;
    Ok(Box::new(move |a| one(clamp(a[x], lo as f32, hi as f32)?)))
}

/// `x` clamped to `[lo, hi]`. A contiguous f32 tensor (MobileNetV2's ReLU6
/// after every conv) takes one vectorisable pass; candle's `clamp` makes two
/// (maximum, then minimum) through broadcast scalar tensors.
fn clamp(x: &Tensor, lo: f32, hi: f32) -> CResult<Tensor> {
    if x.dtype() != CDType::F32 || !x.is_contiguous() || !x.device().is_cpu() {
        return x.clamp(lo, hi);
    }
    let v = depthwise::with_f32_slice(x, |s| {
        s.iter()
            .map(|&v| {
                if v < lo {
                    lo
                } else if v > hi {
                    hi
                } else {
                    v
                }
            })
            .collect::<Vec<f32>>()
    })?;
    Tensor::from_vec(v, x.shape(), x.device())
}

fn select(c: &mut OpCtx) -> Result<Kernel> {
    let cond = c.tensor("cond")?;
    let x = c.tensor("a")?;
    let y = c.tensor("b")?;
    Ok(Box::new(move |a| {
        let shape = broadcast_shape(&[a[cond].dims(), a[x].dims(), a[y].dims()])?;
        let cnd = a[cond].broadcast_as(shape.as_slice())?.contiguous()?;
        let t = a[x].broadcast_as(shape.as_slice())?.contiguous()?;
        let f = a[y].to_dtype(t.dtype())?.broadcast_as(shape.as_slice())?.contiguous()?;
        one(cnd.to_dtype(CDType::U8)?.where_cond(&t, &f)?)
    }))
}

fn broadcast_shape(shapes: &[&[usize]]) -> CResult<Vec<usize>> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[rank - s.len() + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                candle_core::bail!("shapes {shapes:?} do not broadcast")
            }
        }
    }
    Ok(out)
}

fn cast(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let to = c.opt_string("dtype")?.ok_or_else(|| c.error("`dtype` is required"))?;
    let mil = match to.as_str() {
        "fp32" => 11,
        "fp16" => 10,
        "fp64" => 12,
        "bool" => 1,
        "int8" | "int16" | "int32" | "int64" | "uint8" | "uint16" | "uint32" => 23,
        other => return Err(c.unsupported(format!("cast to `{other}`"))),
    };
    let target = compute_dtype(mil, c.policy).expect("numeric");
    let to_bool = to == "bool";
    Ok(Box::new(move |a| {
        if to_bool {
            return one(a[x].ne(0f64)?);
        }
        // Float to int casts truncate toward zero, like numpy's astype.
        let v = a[x];
        if target == CDType::I64 && v.dtype().is_float() {
            let t = (v.relu()?.floor()? - v.neg()?.relu()?.floor()?)?;
            return one(t.to_dtype(target)?);
        }
        one(v.to_dtype(target)?)
    }))
}

fn linear(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let w = c
        .const_tensor("weight")?
        .ok_or_else(|| c.error("`weight` is required"))?;
    let b = c.const_tensor("bias")?;
    if w.rank() != 2 {
        return Err(c.error(format!("weight of rank {}; expected [out, in]", w.rank())));
    }
    Ok(Box::new(move |a| {
        let x = a[x];
        // As candle-nn's Linear: x @ W^T with W broadcast over leading dims.
        let y = match x.dims() {
            [b0, b1, _, _] => x.matmul(&w.broadcast_left((*b0, *b1))?.t()?)?,
            [bsize, _, _] => x.matmul(&w.broadcast_left(*bsize)?.t()?)?,
            _ => x.matmul(&w.t()?)?,
        };
        one(match &b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }))
}

fn matmul(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let y = c.tensor("y")?;
    let tx = c.opt_bool("transpose_x")?.unwrap_or(false);
    let ty = c.opt_bool("transpose_y")?.unwrap_or(false);
    Ok(Box::new(move |a| {
        let (mut l, mut r) = (a[x].clone(), a[y].clone());
        if l.rank() < 2 || r.rank() < 2 {
            candle_core::bail!(
                "matmul of ranks {} and {} (only rank >= 2 is supported)",
                l.rank(),
                r.rank()
            )
        }
        if tx {
            l = l.t()?;
        }
        if ty {
            r = r.t()?;
        }
        one(l.broadcast_matmul(&r)?)
    }))
}

/// Explicit `[begin, end]` padding per spatial dim for `pad_type`.
fn spatial_pads(
    pad_type: &str,
    custom: &[i64],
    input: &[usize],
    kernel: &[usize],
    strides: &[usize],
    dilations: &[usize],
) -> CResult<Vec<(usize, usize)>> {
    let n = input.len();
    Ok(match pad_type {
        "valid" => vec![(0, 0); n],
        "custom" => {
            if custom.len() != 2 * n {
                candle_core::bail!("custom pad has {} values; expected {}", custom.len(), 2 * n)
            }
            (0..n)
                .map(|i| (custom[2 * i].max(0) as usize, custom[2 * i + 1].max(0) as usize))
                .collect()
        }
        "same" | "same_lower" => (0..n)
            .map(|i| {
                let out = input[i].div_ceil(strides[i]);
                let eff = (kernel[i] - 1) * dilations[i] + 1;
                let total = ((out - 1) * strides[i] + eff).saturating_sub(input[i]);
                let small = total / 2;
                if pad_type == "same" {
                    (small, total - small)
                } else {
                    (total - small, small)
                }
            })
            .collect(),
        other => candle_core::bail!("pad_type `{other}`; expected valid, same, same_lower or custom"),
    })
}

/// Strides, dilations, pad type and explicit pads of a conv or pool.
type Spatial = (Vec<usize>, Vec<usize>, String, Vec<i64>);

fn spatial_params(c: &mut OpCtx, n: usize) -> Result<Spatial> {
    let strides = c.opt_ints("strides")?.unwrap_or_else(|| vec![1; n]);
    let dil = c.opt_ints("dilations")?.unwrap_or_else(|| vec![1; n]);
    let pad_type = c.opt_string("pad_type")?.unwrap_or_else(|| "valid".into());
    let pad = c.opt_ints("pad")?.unwrap_or_else(|| vec![0; 2 * n]);
    if strides.len() != n || dil.len() != n || strides.iter().chain(&dil).any(|&v| v < 1) {
        return Err(c.error(format!("strides {strides:?} / dilations {dil:?} for {n} spatial dims")));
    }
    Ok((
        strides.iter().map(|&v| v as usize).collect(),
        dil.iter().map(|&v| v as usize).collect(),
        pad_type,
        pad,
    ))
}

fn conv(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let w = c
        .const_tensor("weight")?
        .ok_or_else(|| c.error("`weight` must be a constant"))?;
    let bias = c.const_tensor("bias")?;
    let groups = c.opt_int("groups")?.unwrap_or(1).max(1) as usize;
    let n = w.rank().saturating_sub(2);
    if !(1..=2).contains(&n) {
        return Err(c.unsupported(format!("{n}-D convolution (1-D and 2-D are supported)")));
    }
    let (strides, dil, pad_type, pad) = spatial_params(c, n)?;
    if strides.iter().any(|&s| s != strides[0]) || dil.iter().any(|&d| d != dil[0]) {
        return Err(c.unsupported(format!("unequal strides {strides:?} or dilations {dil:?}")));
    }
    let (stride, dilation) = (strides[0], dil[0]);
    let kdims = w.dims()[2..].to_vec();
    let (cout, cin_g) = (w.dims()[0], w.dims()[1]);
    let depthwise = n == 2 && groups > 1 && cin_g == 1 && cout == groups;
    if depthwise {
        return depthwise_conv(c, x, &w, bias.as_ref(), (pad_type, pad), stride, dilation);
    }
    let bias = match bias {
        Some(b) => Some(
            b.reshape(if n == 2 { vec![1, cout, 1, 1] } else { vec![1, cout, 1] })
                .map_err(|e| c.error(e.to_string()))?,
        ),
        None => None,
    };
    // A 1x1, stride-1 conv is a matrix product `[cout, cin] @ [cin, h*w]`
    // per image: candle's conv2d would copy the input and the output around it.
    let pointwise = (n == 2 && groups == 1 && kdims == [1, 1] && stride == 1)
        .then(|| w.reshape((cout, cin_g)))
        .transpose()
        .map_err(|e| c.error(e.to_string()))?;
    Ok(Box::new(move |a| {
        let x = a[x];
        let spatial = &x.dims()[2..];
        let pads = spatial_pads(&pad_type, &pad, spatial, &kdims, &strides, &dil)?;
        if let Some(w2) = pointwise.as_ref().filter(|_| pads.iter().all(|&p| p == (0, 0))) {
            let y = pointwise_conv2d(x, w2)?;
            return one(match &bias {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            });
        }
        let symmetric = pads.iter().all(|&(b, e)| b == e && b == pads[0].0);
        let (xp, p) = if symmetric {
            (x.clone(), pads[0].0)
        } else {
            let mut xp = x.clone();
            for (i, &(b, e)) in pads.iter().enumerate() {
                xp = xp.pad_with_zeros(2 + i, b, e)?;
            }
            (xp, 0)
        };
        let y = if n == 2 {
            xp.conv2d(&w, p, stride, dilation, groups)?
        } else {
            xp.conv1d(&w, p, stride, dilation, groups)?
        };
        one(match &bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }))
}

/// `x` `[n, cin, h, w]` times `w2` `[cout, cin]` as one batched matmul on
/// the contiguous input, straight into the NCHW output.
fn pointwise_conv2d(x: &Tensor, w2: &Tensor) -> CResult<Tensor> {
    let (nb, cin, h, wd) = x.dims4()?;
    let xs = x.contiguous()?.reshape((nb, cin, h * wd))?;
    let y = w2.broadcast_left(nb)?.matmul(&xs)?;
    y.reshape((nb, w2.dims()[0], h, wd))
}

/// A depthwise conv runs in our own kernel (see `depthwise`), with the
/// weights and bias flattened to f32 once here and the bias fused.
fn depthwise_conv(
    c: &mut OpCtx,
    x: usize,
    w: &Tensor,
    bias: Option<&Tensor>,
    (pad_type, pad): (String, Vec<i64>),
    stride: usize,
    dilation: usize,
) -> Result<Kernel> {
    let f32s = |t: &Tensor| -> CResult<Vec<f32>> { t.to_dtype(CDType::F32)?.flatten_all()?.to_vec1::<f32>() };
    let (_, _, kh, kw) = w.dims4().map_err(|e| c.error(e.to_string()))?;
    let ws = f32s(w).map_err(|e| c.error(e.to_string()))?;
    let bs = bias.map(f32s).transpose().map_err(|e| c.error(e.to_string()))?;
    Ok(Box::new(move |a| {
        let x = a[x];
        let pads = spatial_pads(&pad_type, &pad, &x.dims()[2..], &[kh, kw], &[stride; 2], &[dilation; 2])?;
        one(depthwise::depthwise_conv2d(
            x,
            &ws,
            (kh, kw),
            bs.as_deref(),
            &pads,
            stride,
            dilation,
        )?)
    }))
}

#[derive(Clone, Copy)]
enum PoolKind {
    Max,
    Avg,
}

fn pool(c: &mut OpCtx, kind: PoolKind) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let k: Vec<usize> = c.ints("kernel_sizes")?.into_iter().map(|v| v.max(1) as usize).collect();
    if k.len() != 2 {
        return Err(c.unsupported(format!("{}-D pooling (2-D is supported)", k.len())));
    }
    let (strides, _, pad_type, pad) = spatial_params(c, 2)?;
    let ceil_mode = c.opt_bool("ceil_mode")?.unwrap_or(false);
    let exclude = c.opt_bool("exclude_padding_from_average")?.unwrap_or(false);
    Ok(Box::new(move |a| {
        let x = a[x];
        let spatial = &x.dims()[2..];
        let mut pads = spatial_pads(&pad_type, &pad, spatial, &k, &strides, &[1, 1])?;
        if ceil_mode {
            for i in 0..2 {
                let span = spatial[i] + pads[i].0 + pads[i].1;
                let floor_out = (span - k[i]) / strides[i] + 1;
                let ceil_out = (span - k[i]).div_ceil(strides[i]) + 1;
                if ceil_out > floor_out {
                    pads[i].1 += (ceil_out - 1) * strides[i] + k[i] - span;
                }
            }
        }
        let padded = pads.iter().any(|&(b, e)| b + e > 0);
        let kk = (k[0], k[1]);
        let ss = (strides[0], strides[1]);
        match kind {
            PoolKind::Max => {
                let xp = if padded {
                    pad_value(x, &pads, f64::NEG_INFINITY)?
                } else {
                    x.clone()
                };
                one(xp.max_pool2d_with_stride(kk, ss)?)
            }
            PoolKind::Avg => {
                if !padded {
                    return one(x.avg_pool2d_with_stride(kk, ss)?);
                }
                let xp = pad_value(x, &pads, 0.0)?;
                let sum = xp.avg_pool2d_with_stride(kk, ss)?;
                if !exclude && !ceil_mode {
                    return one(sum);
                }
                // Divide by the number of real (unpadded) elements per window.
                let ones = Tensor::ones((1, 1, spatial[0], spatial[1]), x.dtype(), x.device())?;
                let count = pad_value(&ones, &pads, 0.0)?.avg_pool2d_with_stride(kk, ss)?;
                one(sum.broadcast_div(&count)?)
            }
        }
    }))
}

/// Pads the two trailing (spatial) dims with a constant value.
fn pad_value(x: &Tensor, pads: &[(usize, usize)], value: f64) -> CResult<Tensor> {
    let mut t = x.clone();
    let rank = x.rank();
    for (i, &(b, e)) in pads.iter().enumerate() {
        let dim = rank - pads.len() + i;
        if b + e == 0 {
            continue;
        }
        if value == 0.0 {
            t = t.pad_with_zeros(dim, b, e)?;
            continue;
        }
        let mut parts = Vec::new();
        let side = |n: usize| -> CResult<Tensor> {
            let mut shape = t.dims().to_vec();
            shape[dim] = n;
            Tensor::full(value as f32, shape, t.device())?.to_dtype(t.dtype())
        };
        if b > 0 {
            parts.push(side(b)?);
        }
        parts.push(t.clone());
        if e > 0 {
            parts.push(side(e)?);
        }
        t = Tensor::cat(&parts, dim)?;
    }
    Ok(t)
}

fn batch_norm(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let mean = c
        .const_tensor("mean")?
        .ok_or_else(|| c.error("`mean` must be a constant"))?;
    let var = c
        .const_tensor("variance")?
        .ok_or_else(|| c.error("`variance` must be a constant"))?;
    let gamma = c.const_tensor("gamma")?;
    let beta = c.const_tensor("beta")?;
    let eps = c.opt_float("epsilon")?.unwrap_or(1e-5);
    // Fold into one scale and shift per channel: y = x * s + t.
    let fold = || -> CResult<(Tensor, Tensor)> {
        let dt = mean.dtype();
        let m = mean.to_dtype(CDType::F32)?;
        let inv = var.to_dtype(CDType::F32)?.affine(1.0, eps)?.sqrt()?.recip()?;
        let s = match &gamma {
            Some(g) => g.to_dtype(CDType::F32)?.mul(&inv)?,
            None => inv,
        };
        let t = (match &beta {
            Some(b) => b.to_dtype(CDType::F32)?,
            None => m.zeros_like()?,
        } - m.mul(&s)?)?;
        Ok((s.to_dtype(dt)?, t.to_dtype(dt)?))
    };
    let (s, t) = fold().map_err(|e| c.error(e.to_string()))?;
    Ok(Box::new(move |a| {
        let x = a[x];
        let mut shape = vec![1usize; x.rank()];
        if x.rank() < 2 {
            candle_core::bail!("batch_norm input of rank {}; expected [N, C, ...]", x.rank())
        }
        shape[1] = x.dims()[1];
        one(x
            .broadcast_mul(&s.reshape(shape.as_slice())?)?
            .broadcast_add(&t.reshape(shape.as_slice())?)?)
    }))
}

fn layer_norm(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let axes = c.opt_ints("axes")?;
    let gamma = c.const_tensor("gamma")?;
    let beta = c.const_tensor("beta")?;
    let eps = c.opt_float("epsilon")?.unwrap_or(1e-5);
    Ok(Box::new(move |a| {
        let x = a[x];
        let rank = x.rank();
        let mut ax: Vec<usize> = match &axes {
            Some(v) => v.iter().map(|&i| axis_of(i, rank)).collect::<CResult<_>>()?,
            None => (0..rank).collect(),
        };
        ax.sort_unstable();
        if ax == [rank - 1] {
            let n = x.dims()[rank - 1];
            let g = match &gamma {
                Some(g) => g.clone(),
                None => Tensor::ones(n, x.dtype(), x.device())?,
            };
            let b = match &beta {
                Some(b) => b.clone(),
                None => Tensor::zeros(n, x.dtype(), x.device())?,
            };
            return one(candle_nn::ops::layer_norm(&x.contiguous()?, &g, &b, eps as f32)?);
        }
        let mean = x.mean_keepdim(ax.clone())?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(ax.clone())?;
        let mut y = centered.broadcast_div(&var.affine(1.0, eps)?.sqrt()?)?;
        if let Some(g) = &gamma {
            y = y.broadcast_mul(g)?;
        }
        if let Some(b) = &beta {
            y = y.broadcast_add(b)?;
        }
        one(y)
    }))
}

fn softmax(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let axis = c.opt_int("axis")?.unwrap_or(-1);
    Ok(Box::new(move |a| {
        let x = a[x];
        let ax = axis_of(axis, x.rank())?;
        if ax + 1 == x.rank() {
            one(candle_nn::ops::softmax_last_dim(&x.contiguous()?)?)
        } else {
            one(candle_nn::ops::softmax(x, ax)?)
        }
    }))
}

#[derive(Clone, Copy)]
enum Reduce {
    Mean,
    Sum,
    Max,
    Min,
    L2,
}

fn reduce(c: &mut OpCtx, kind: Reduce) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let axes = c.opt_ints("axes")?;
    let keep = c.opt_bool("keep_dims")?.unwrap_or(false);
    Ok(Box::new(move |a| {
        let x = a[x];
        let rank = x.rank();
        let mut ax: Vec<usize> = match &axes {
            Some(v) => v.iter().map(|&i| axis_of(i, rank)).collect::<CResult<_>>()?,
            None => (0..rank).collect(),
        };
        ax.sort_unstable();
        ax.dedup();
        let mut y = match kind {
            Reduce::Mean => x.mean_keepdim(ax.clone())?,
            Reduce::Sum => x.sum_keepdim(ax.clone())?,
            Reduce::L2 => x.sqr()?.sum_keepdim(ax.clone())?.sqrt()?,
            Reduce::Max | Reduce::Min => {
                let mut y = x.clone();
                for &d in &ax {
                    y = match kind {
                        Reduce::Max => y.max_keepdim(d)?,
                        _ => y.min_keepdim(d)?,
                    };
                }
                y
            }
        };
        if !keep {
            for &d in ax.iter().rev() {
                y = y.squeeze(d)?;
            }
        }
        one(y)
    }))
}

fn l2_norm(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let eps = c.opt_float("epsilon")?.unwrap_or(1e-6);
    Ok(Box::new(move |a| {
        // Normalises over all dims but the batch dim (rank >= 3: the last three).
        let x = a[x];
        let rank = x.rank();
        let ax: Vec<usize> = if rank >= 3 {
            (rank - 3..rank).collect()
        } else {
            (rank.saturating_sub(1)..rank).collect()
        };
        let norm = x.sqr()?.sum_keepdim(ax)?.sqrt()?.affine(1.0, eps)?;
        one(x.broadcast_div(&norm)?)
    }))
}

fn reshape(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let runtime = c.is_runtime("shape")?;
    let (shape_const, shape_op) = if runtime {
        (None, Some(c.tensor("shape")?))
    } else {
        (Some(c.ints("shape")?), None)
    };
    Ok(Box::new(move |a| {
        let x = a[x];
        let spec: Vec<i64> = match (&shape_const, shape_op) {
            (Some(s), _) => s.clone(),
            (None, Some(i)) => a[i].to_dtype(CDType::I64)?.flatten_all()?.to_vec1()?,
            _ => unreachable!(),
        };
        let dims = x.dims();
        let mut out: Vec<usize> = Vec::with_capacity(spec.len());
        let mut hole = None;
        for (i, &s) in spec.iter().enumerate() {
            match s {
                -1 if hole.is_none() => {
                    hole = Some(i);
                    out.push(1);
                }
                0 if spec.len() == dims.len() => out.push(dims[i]),
                s if s > 0 => out.push(s as usize),
                s => candle_core::bail!("reshape target {spec:?} has an invalid entry {s}"),
            }
        }
        if let Some(h) = hole {
            let known: usize = out.iter().product();
            if known == 0 || x.elem_count() % known != 0 {
                candle_core::bail!("cannot reshape {dims:?} into {spec:?}")
            }
            out[h] = x.elem_count() / known;
        }
        one(x.reshape(out)?)
    }))
}

fn transpose(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let perm = c.ints("perm")?;
    Ok(Box::new(move |a| {
        let x = a[x];
        let p: Vec<usize> = perm.iter().map(|&i| axis_of(i, x.rank())).collect::<CResult<_>>()?;
        one(x.permute(p)?)
    }))
}

fn expand_dims(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let axes = c.ints("axes")?;
    Ok(Box::new(move |a| {
        let x = a[x];
        let out_rank = x.rank() + axes.len();
        let mut ax: Vec<usize> = axes.iter().map(|&i| axis_of(i, out_rank)).collect::<CResult<_>>()?;
        ax.sort_unstable();
        let mut y = x.clone();
        for d in ax {
            y = y.unsqueeze(d)?;
        }
        one(y)
    }))
}

fn squeeze(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let axes = c.opt_ints("axes")?;
    Ok(Box::new(move |a| {
        let x = a[x];
        let mut ax: Vec<usize> = match &axes {
            Some(v) => v.iter().map(|&i| axis_of(i, x.rank())).collect::<CResult<_>>()?,
            None => x
                .dims()
                .iter()
                .enumerate()
                .filter(|(_, &d)| d == 1)
                .map(|(i, _)| i)
                .collect(),
        };
        ax.sort_unstable();
        let mut y = x.clone();
        for d in ax.into_iter().rev() {
            y = y.squeeze(d)?;
        }
        one(y)
    }))
}

fn concat(c: &mut OpCtx) -> Result<Kernel> {
    let xs = c.tensors("values")?;
    let axis = c.opt_int("axis")?.ok_or_else(|| c.error("`axis` is required"))?;
    if c.opt_bool("interleave")?.unwrap_or(false) {
        return Err(c.unsupported("interleave=true"));
    }
    Ok(Box::new(move |a| {
        let parts: Vec<&Tensor> = xs.iter().map(|&i| a[i]).collect();
        let ax = axis_of(axis, parts[0].rank())?;
        one(Tensor::cat(&parts, ax)?)
    }))
}

fn split(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let axis = c.opt_int("axis")?.ok_or_else(|| c.error("`axis` is required"))?;
    let sizes = c.opt_ints("split_sizes")?;
    let num = c.opt_int("num_splits")?;
    let n_out = c.op.outputs.len();
    Ok(Box::new(move |a| {
        let x = a[x];
        let ax = axis_of(axis, x.rank())?;
        let dim = x.dims()[ax];
        let sizes: Vec<usize> = match (&sizes, num) {
            (Some(s), _) => s.iter().map(|&v| v as usize).collect(),
            (None, Some(n)) if n > 0 && dim % n as usize == 0 => vec![dim / n as usize; n as usize],
            _ => vec![dim / n_out.max(1); n_out],
        };
        let mut start = 0;
        let mut outs = Vec::new();
        for s in sizes {
            outs.push(x.narrow(ax, start, s)?);
            start += s;
        }
        Ok(outs)
    }))
}

fn slice_by_index(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let begin = c.ints("begin")?;
    let end = c.ints("end")?;
    let stride = c.opt_ints("stride")?;
    let bmask = c.opt_ints("begin_mask")?;
    let emask = c.opt_ints("end_mask")?;
    let smask = c.opt_ints("squeeze_mask")?;
    Ok(Box::new(move |a| {
        let mut y = a[x].clone();
        let dims = y.dims().to_vec();
        for (d, &size) in dims.iter().enumerate() {
            let s = stride.as_ref().map_or(1, |v| v.get(d).copied().unwrap_or(1));
            if s == 0 {
                candle_core::bail!("slice stride 0 on axis {d}")
            }
            let n = size as i64;
            let norm = |v: i64| if v < 0 { v + n } else { v };
            let masked = |m: &Option<Vec<i64>>| m.as_ref().is_some_and(|v| v.get(d).copied().unwrap_or(0) != 0);
            let (lo, hi) = if s > 0 {
                let b = if masked(&bmask) {
                    0
                } else {
                    norm(begin.get(d).copied().unwrap_or(0)).clamp(0, n)
                };
                let e = if masked(&emask) {
                    n
                } else {
                    norm(end.get(d).copied().unwrap_or(n)).clamp(0, n)
                };
                (b, e)
            } else {
                let b = if masked(&bmask) {
                    n - 1
                } else {
                    norm(begin.get(d).copied().unwrap_or(n - 1)).clamp(-1, n - 1)
                };
                let e = if masked(&emask) {
                    -1
                } else {
                    norm(end.get(d).copied().unwrap_or(-1)).clamp(-1, n - 1)
                };
                (b, e)
            };
            let idx: Vec<i64> = if s > 0 {
                (lo..hi).step_by(s as usize).collect()
            } else {
                let mut v = Vec::new();
                let mut i = lo;
                while i > hi {
                    v.push(i);
                    i += s;
                }
                v
            };
            if s == 1 && (lo, hi) == (0, n) {
                continue;
            }
            y = if s == 1 {
                y.narrow(d, lo as usize, (hi - lo).max(0) as usize)?
            } else {
                y.index_select(&Tensor::new(idx, y.device())?, d)?
            };
        }
        if let Some(m) = &smask {
            for d in (0..dims.len()).rev() {
                if m.get(d).copied().unwrap_or(0) != 0 {
                    y = y.squeeze(d)?;
                }
            }
        }
        one(y)
    }))
}

fn gather(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let idx = c.tensor("indices")?;
    let axis = c.opt_int("axis")?.unwrap_or(0);
    if c.opt_int("batch_dims")?.unwrap_or(0) != 0 {
        return Err(c.unsupported("batch_dims != 0"));
    }
    Ok(Box::new(move |a| {
        let (x, ind) = (a[x], a[idx]);
        let ax = axis_of(axis, x.rank())?;
        let dim = x.dims()[ax] as i64;
        let flat = ind.to_dtype(CDType::I64)?.flatten_all()?;
        let v: Vec<i64> = flat.to_vec1()?;
        // Bounds are checked here: a bad index is an error, never a wild read.
        let mut fixed = Vec::with_capacity(v.len());
        for i in v {
            let j = if i < 0 { i + dim } else { i };
            if j < 0 || j >= dim {
                candle_core::bail!("gather index {i} is out of range for an axis of size {dim}")
            }
            fixed.push(j);
        }
        let sel = x.index_select(&Tensor::new(fixed, x.device())?, ax)?;
        let mut shape = x.dims()[..ax].to_vec();
        shape.extend_from_slice(ind.dims());
        shape.extend_from_slice(&x.dims()[ax + 1..]);
        one(sel.reshape(shape)?)
    }))
}

fn pad(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let pads = c.ints("pad")?;
    let mode = c.opt_string("mode")?.unwrap_or_else(|| "constant".into());
    let value = c.opt_float("constant_val")?.unwrap_or(0.0);
    if mode != "constant" && mode != "replicate" {
        return Err(c.unsupported(format!("pad mode `{mode}`")));
    }
    Ok(Box::new(move |a| {
        let x = a[x];
        let n = pads.len() / 2;
        let p: Vec<(usize, usize)> = (0..n)
            .map(|i| (pads[2 * i].max(0) as usize, pads[2 * i + 1].max(0) as usize))
            .collect();
        if mode == "replicate" {
            let mut t = x.clone();
            for (i, &(b, e)) in p.iter().enumerate() {
                t = t.pad_with_same(x.rank() - n + i, b, e)?;
            }
            return one(t);
        }
        one(pad_value(x, &p, value)?)
    }))
}

fn tile(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let reps = c.ints("reps")?;
    Ok(Box::new(move |a| {
        let mut y = a[x].clone();
        for (d, &r) in reps.iter().enumerate() {
            if r > 1 {
                let parts = vec![y.clone(); r as usize];
                y = Tensor::cat(&parts, d)?;
            }
        }
        one(y)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
        d.max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn pointwise_conv_matches_candle_conv2d() {
        let x = Tensor::randn(0f32, 1.0, (2, 5, 3, 7), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (6, 5, 1, 1), &Device::Cpu).unwrap();
        let want = x.conv2d(&w, 0, 1, 1, 1).unwrap();
        let got = pointwise_conv2d(&x, &w.reshape((6, 5)).unwrap()).unwrap();
        assert_eq!(got.dims(), want.dims());
        assert!(max_diff(&got, &want) < 1e-5);
        // A non-contiguous input (a transposed view) gives the same result.
        let xt = x.transpose(2, 3).unwrap();
        let want = xt.contiguous().unwrap().conv2d(&w, 0, 1, 1, 1).unwrap();
        assert!(max_diff(&pointwise_conv2d(&xt, &w.reshape((6, 5)).unwrap()).unwrap(), &want) < 1e-5);
    }

    #[test]
    fn clamp_matches_candle_clamp() {
        let x = (Tensor::randn(0f32, 5.0, (3, 4, 5), &Device::Cpu).unwrap() + 2.0).unwrap();
        for t in [x.clone(), x.transpose(0, 2).unwrap(), x.to_dtype(CDType::F16).unwrap()] {
            let got = clamp(&t, 0.0, 6.0).unwrap();
            let want = t.clamp(0f32, 6f32).unwrap();
            assert_eq!((got.dims(), got.dtype()), (want.dims(), want.dtype()));
            let (g, w) = (got.to_dtype(CDType::F32).unwrap(), want.to_dtype(CDType::F32).unwrap());
            assert_eq!(max_diff(&g, &w), 0.0);
        }
    }
}
