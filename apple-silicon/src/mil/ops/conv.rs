//! Convolution (coremltools `conv.py`): `conv`, `conv_transpose`,
//! `conv_quantized`.
//!
//! Conventions: `[N, C, *spatial]` input with 1-3 spatial dims, weight
//! `[C_out, C_in / groups, *kernel]` (`conv_transpose`: `[C_in, C_out /
//! groups, *kernel]`), optional per-channel `bias`; iOS17 lets weight and
//! bias have another float dtype than x. `pad_type` valid / same /
//! same_lower / custom with `pad` as `[begin, end]` per spatial dim (see
//! `spatial`). Kernels: depthwise 2-D convs take our own (`mil::depthwise`),
//! 1×1 stride-1 convs one matmul, other 1-/2-D convs with equal dilations
//! candle's conv (unequal strides as stride 1 then subsampled); 3-D,
//! unequal dilations and run-time weights a direct host loop.

use std::sync::Arc;

use candle_core::{DType as CDType, Tensor};

use super::spatial::{check_elems, check_padded, from_host, host_f32, lift3, spatial_pads, spatial_params, window_out};
use super::{declared_dims, one, Builder, CResult};
use crate::error::Result;
use crate::mil::fuse::{Act, Epi, Tail};
use crate::mil::par_elementwise::{self, BinOp};
use crate::mil::weights::{self, Weights};
use crate::mil::{conv_gemm, depthwise, Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "conv" => conv,
        "conv_transpose" => conv_transpose,
        "conv_quantized" => conv,
        _ => return None,
    })
}

pub(super) fn conv(c: &mut OpCtx) -> Result<Kernel> {
    if c.op.r#type == "conv" && c.is_runtime("weight")? {
        return conv_dynamic(c);
    }
    let x = c.tensor("x")?;
    // The weight in its stored form: f16 and compressed weights of the
    // general (GEMM) path stay so, converted on each call; the other paths
    // (depthwise, direct, conv_quantized) take the dense f32 tensor.
    let wts = c
        .const_weights("weight")?
        .ok_or_else(|| c.error("`weight` must be a constant tensor"))?;
    let wts = if c.op.r#type == "conv_quantized" {
        let w = dequantize_weight(c, wts.to_tensor().map_err(|e| c.error(e.to_string()))?)?;
        Arc::new(Weights::dense(w).map_err(|e| c.error(e.to_string()))?)
    } else {
        wts
    };
    let wd = wts.shape().to_vec();
    let bias = c.const_tensor("bias")?;
    let (n, groups) = weight_groups(c, &wd, "C_out")?;
    let (cout, cin_g) = (wd[0], wd[1]);
    check_bias(c, bias.as_ref(), cout)?;
    let (strides, dil, pad_type, pad) = spatial_params(c, n)?;
    check_pad_type(c, &pad_type, &pad, n)?;
    let kdims = wd[2..].to_vec();
    let equal_strides = strides.iter().all(|&s| s == strides[0]);
    let dense = |c: &OpCtx| wts.to_tensor().map_err(|e| c.error(e.to_string()));
    if n > 2 || dil.iter().any(|&d| d != dil[0]) {
        let w = dense(c)?;
        // Unequal dilations, or 3-D: the direct kernel.
        let ws = host_f32(&w).map_err(|e| c.error(e.to_string()))?;
        let bs = bias
            .as_ref()
            .map(host_f32)
            .transpose()
            .map_err(|e| c.error(e.to_string()))?;
        let wd = w.dims().to_vec();
        return Ok(Box::new(move |a| {
            let x = a[x];
            check_channels(x, cin_g * groups, n)?;
            let pads = spatial_pads(&pad_type, &pad, &x.dims()[2..], &kdims, &strides, &dil)?;
            one(conv_direct(x, &ws, &wd, bs.as_deref(), groups, &strides, &dil, &pads)?)
        }));
    }
    // Unequal strides: candle's conv at stride 1, then every stride-th
    // row and column (costs the product of the strides in extra work).
    let (stride, dilation) = (if equal_strides { strides[0] } else { 1 }, dil[0]);
    let depthwise = equal_strides && n == 2 && groups > 1 && cin_g == 1 && cout == groups;
    if depthwise {
        let w = dense(c)?;
        return depthwise_conv(c, x, &w, bias.as_ref(), (pad_type, pad), stride, dilation);
    }
    let general = General {
        x,
        n,
        cin_g,
        cout,
        groups,
        kdims,
        strides,
        dil,
        pad_type,
        pad,
        host_bias: bias
            .as_ref()
            .map(host_f32)
            .transpose()
            .map_err(|e| c.error(e.to_string()))?,
        bias: match bias {
            Some(b) => Some(
                b.reshape(if n == 2 { vec![1, cout, 1, 1] } else { vec![1, cout, 1] })
                    .map_err(|e| c.error(e.to_string()))?,
            ),
            None => None,
        },
        w: wts,
    };
    if general.is_pointwise() {
        c.pointwise = Some(Pointwise {
            conv: general.clone(),
            declared: declared_dims(c.op),
        });
    }
    let offer = general.clone();
    c.offer = Some(Box::new(move |epi| offer.clone().kernel(epi)));
    Ok(general.kernel(Epi::act(Act::Identity)))
}

/// A 2-D 1 × 1 conv at stride 1 in one group, x its only operand: the
/// block builder may run it together with the depthwise conv that reads
/// it ([`expand_then_depthwise`]).
#[derive(Clone)]
pub(crate) struct Pointwise {
    conv: General,
    /// Its output's shape as the program declares it, if every dim is a constant.
    declared: Option<Vec<usize>>,
}

/// `[begin, end]` pads per spatial dim.
type Pads = Vec<(usize, usize)>;

/// A depthwise conv as its kernel takes it, x its operand `x`.
#[derive(Clone)]
pub(crate) struct DepthwiseSpec {
    x: usize,
    ws: Arc<[f32]>,
    bs: Option<Arc<[f32]>>,
    kernel: (usize, usize),
    pad_type: String,
    pad: Vec<i64>,
    stride: usize,
    dilation: usize,
}

impl DepthwiseSpec {
    /// Whether x is the op's only operand (then it is operand 0).
    pub(crate) fn reads_only_x(&self, operands: usize) -> bool {
        self.x == 0 && operands == 1
    }

    /// Whether the plan should join this conv to `pw`, the pointwise conv
    /// it reads: when `pw`'s declared output would run the banded path
    /// (`depthwise::expand::applies`). Elsewhere the joined step would run
    /// the two kernels in turn and only hold `pw`'s input longer.
    pub(crate) fn joins(&self, pw: &Pointwise) -> bool {
        let Some(&[_, ch, h, w]) = pw.declared.as_deref() else {
            return false;
        };
        let (kh, kw) = self.kernel;
        if ch != pw.conv.cout || self.ws.len() != ch * kh * kw {
            return false;
        }
        let Ok((pads, _)) = self.geometry((h, w)) else {
            return false;
        };
        depthwise::expand::applies(
            (pw.conv.cin_g, ch),
            (h, w),
            self.kernel,
            &pads,
            (self.stride, self.dilation),
        )
    }

    /// The padding of an `h × w` input and the output's size.
    fn geometry(&self, (h, w): (usize, usize)) -> CResult<(Pads, (usize, usize))> {
        let (kh, kw) = self.kernel;
        let (s, d) = (self.stride, self.dilation);
        let pads = spatial_pads(&self.pad_type, &self.pad, &[h, w], &[kh, kw], &[s; 2], &[d; 2])?;
        let oh = window_out(h, pads[0], eff_kernel(kh, d), s)?;
        let ow = window_out(w, pads[1], eff_kernel(kw, d), s)?;
        Ok((pads, (oh, ow)))
    }
}

/// The kernel of a pointwise conv (`pw`, its own epilogue `pw_epi`: an
/// activation only) and the depthwise conv that reads it (`dw`, with
/// `epi` fused after it), as one step whose operands are the pointwise
/// conv's then the epilogue's: on f32 inputs whose expanded activation is
/// large, the two run together a band at a time
/// (`depthwise::expand`), else one after the other as the unfused steps
/// would. The same result either way, bit for bit.
pub(crate) fn expand_then_depthwise(pw: &Pointwise, pw_epi: Epi, dw: &DepthwiseSpec, epi: Epi) -> Kernel {
    let (g, d) = (pw.conv.clone(), dw.clone());
    let first = pw.conv.clone().kernel(pw_epi);
    let second = depthwise_kernel(dw.clone(), epi);
    Box::new(move |a| {
        if let Some(y) = banded(&g, pw_epi.pre, &d, epi, a)? {
            return one(y);
        }
        let mid = first(&a[..1])?;
        let mut args = a.to_vec();
        args[0] = &mid[0];
        second(&args)
    })
}

/// The banded run of [`expand_then_depthwise`], or `None` where it does not apply.
fn banded(g: &General, act: Act, d: &DepthwiseSpec, epi: Epi, a: &[&Tensor]) -> CResult<Option<Tensor>> {
    let x = a[g.x];
    if x.dtype() != CDType::F32 || x.rank() != 4 || x.dims()[1] != g.cin_g {
        return Ok(None);
    }
    let (nb, h, w) = (x.dims()[0], x.dims()[2], x.dims()[3]);
    let own = spatial_pads(&g.pad_type, &g.pad, &[h, w], &g.kdims, &g.strides, &g.dil)?;
    if own.iter().any(|&p| p != (0, 0)) {
        return Ok(None);
    }
    let (pads, (oh, ow)) = d.geometry((h, w))?;
    check_elems(
        &[nb, g.cout, h + pads[0].0 + pads[0].1, w + pads[1].0 + pads[1].1],
        "padded input",
    )?;
    let residual = match epi.residual {
        Some(_) => match epi.fast_residual(a, &[nb, g.cout, oh, ow])? {
            Some(r) => Some(r),
            None => return Ok(None),
        },
        None => None,
    };
    let x = x.contiguous()?;
    let dw = depthwise::expand::Depthwise {
        weight: &d.ws,
        kernel: d.kernel,
        bias: d.bs.as_deref(),
        pads: &pads,
        stride: d.stride,
        dilation: d.dilation,
    };
    let run = |rs: Option<&[f32]>| {
        let tail = Tail {
            pre: epi.pre,
            residual: rs,
            post: epi.post,
        };
        weights::with_rows(&g.w, 0..g.cout, |ws| {
            let e = depthwise::expand::Expansion {
                weight: ws,
                bias: g.host_bias.as_deref(),
                act,
            };
            depthwise::expand::expand_depthwise(&x, &e, &dw, tail)
        })
    };
    match residual {
        Some(r) => depthwise::with_f32_slice(&r, |rs| run(Some(rs)))?,
        None => run(None),
    }
}

/// A 1-D or 2-D conv with equal dilations and a constant weight (not
/// depthwise): what its kernel needs, so that the kernel can be built again
/// with an activation fused (`mil::fuse`).
#[derive(Clone)]
struct General {
    x: usize,
    n: usize,
    cin_g: usize,
    cout: usize,
    groups: usize,
    kdims: Vec<usize>,
    strides: Vec<usize>,
    dil: Vec<usize>,
    pad_type: String,
    pad: Vec<i64>,
    host_bias: Option<Vec<f32>>,
    /// The bias as `[1, C_out, 1(, 1)]`, for the candle path.
    bias: Option<Tensor>,
    w: Arc<Weights>,
}

impl General {
    /// Whether this is a 2-D 1 × 1 conv at stride 1 in one group, reading
    /// only x (its padding, which must be zero, is checked at run time).
    fn is_pointwise(&self) -> bool {
        self.n == 2 && self.groups == 1 && self.x == 0 && self.kdims == [1, 1] && self.strides == [1, 1]
    }

    /// The kernel: f32 inputs run on our GEMM (`mil::conv_gemm`, bias and
    /// `epi` fused; a residual of another dtype or shape is added after, as
    /// the unfused add would); other dtypes on candle's conv, then the bias
    /// and `epi` as the unfused ops compute them.
    fn kernel(self, epi: Epi) -> Kernel {
        Box::new(move |a| {
            let g = &self;
            let x = a[g.x];
            let n = g.n;
            check_channels(x, g.cin_g * g.groups, n)?;
            let spatial = &x.dims()[2..];
            let pads = spatial_pads(&g.pad_type, &g.pad, spatial, &g.kdims, &g.strides, &g.dil)?;
            // Sizes checked here: candle's conv would underflow on a kernel longer than the input.
            let mut out_dims = vec![x.dims()[0], g.cout];
            for i in 0..n {
                out_dims.push(window_out(
                    spatial[i],
                    pads[i],
                    eff_kernel(g.kdims[i], g.dil[i]),
                    g.strides[i],
                )?);
            }
            check_padded(x, &pads)?;
            if x.dtype() == CDType::F32 {
                if let Some(r) = epi.fast_residual(a, &out_dims)? {
                    let y = depthwise::with_f32_slice(&r, |rs| {
                        let tail = Tail {
                            pre: epi.pre,
                            residual: Some(rs),
                            post: epi.post,
                        };
                        g.on_gemm(x, &pads, tail)
                    })??;
                    return one(y);
                }
                let y = g.on_gemm(x, &pads, Tail::act(epi.pre))?;
                return one(epi.finish_unfused(y, a)?);
            }
            let y = g.on_candle(x, &pads)?;
            one(epi.finish_unfused(epi.pre.apply(&y)?, a)?)
        })
    }

    fn on_gemm(&self, x: &Tensor, pads: &[(usize, usize)], tail: Tail) -> CResult<Tensor> {
        let one_d = self.n == 1;
        let (nb, cin) = (x.dims()[0], x.dims()[1]);
        let (h, wd) = if one_d {
            (1, x.dims()[2])
        } else {
            (x.dims()[2], x.dims()[3])
        };
        let pick = |v: &[usize]| if one_d { (1, v[0]) } else { (v[0], v[1]) };
        let win = conv_gemm::Window {
            kernel: pick(&self.kdims),
            stride: pick(&self.strides),
            dilation: pick(&self.dil),
            pads: if one_d { [(0, 0), pads[0]] } else { [pads[0], pads[1]] },
        };
        let x = x.contiguous()?;
        // A dense weight is read in place; an f16 or compressed one is
        // converted whole into this thread's scratch (one weight at a time).
        let (y, (oh, ow)) = depthwise::with_f32_slice(&x, |xs| {
            weights::with_rows(&self.w, 0..self.cout, |ws| {
                conv_gemm::conv2d(
                    xs,
                    (nb, cin, h, wd),
                    ws,
                    self.cout,
                    self.groups,
                    &win,
                    self.host_bias.as_deref(),
                    tail,
                )
            })
        })??;
        let shape = if one_d {
            vec![nb, self.cout, ow]
        } else {
            vec![nb, self.cout, oh, ow]
        };
        Tensor::from_vec(y, shape, x.device())
    }

    /// candle's conv (unequal strides as stride 1, then subsampled) plus the bias.
    fn on_candle(&self, x: &Tensor, pads: &[(usize, usize)]) -> CResult<Tensor> {
        let equal_strides = self.strides.iter().all(|&s| s == self.strides[0]);
        let (stride, dilation) = (if equal_strides { self.strides[0] } else { 1 }, self.dil[0]);
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
        // iOS17: weight and bias may have another dtype than x.
        let w = self.w.to_tensor()?.to_dtype(x.dtype())?;
        let mut y = if self.n == 2 {
            xp.conv2d(&w, p, stride, dilation, self.groups)?
        } else {
            xp.conv1d(&w, p, stride, dilation, self.groups)?
        };
        if !equal_strides {
            for (i, &s) in self.strides.iter().enumerate() {
                let len = y.dims()[2 + i];
                if s > 1 {
                    let idx: Vec<u32> = (0..len as u32).step_by(s).collect();
                    let idx = Tensor::from_vec(idx, len.div_ceil(s), y.device())?;
                    y = y.index_select(&idx, 2 + i)?;
                }
            }
        }
        match &self.bias {
            Some(b) => par_elementwise::binary(BinOp::Add, &y, &b.to_dtype(x.dtype())?),
            None => Ok(y),
        }
    }
}

/// A conv whose weight is computed at run time (coremltools allows it
/// without dilations): the weight's shape is checked on every call, then
/// the direct kernel runs (the weight is read to the host each call).
fn conv_dynamic(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let w = c.tensor("weight")?;
    let bias = c.const_tensor("bias")?;
    let groups = c.opt_int("groups")?.unwrap_or(1);
    if groups < 1 {
        return Err(c.unsupported(format!("`groups` {groups}")));
    }
    let groups = groups as usize;
    let n = c
        .opt_ints("strides")?
        .or(c.opt_ints("dilations")?)
        .map(|v| v.len())
        .or_else(|| c.opt_ints("pad").ok().flatten().map(|p| p.len() / 2));
    // The spatial rank comes from the weight at run time; parameters given here must agree with it.
    let strides_p = c.opt_ints("strides")?;
    let dil_p = c.opt_ints("dilations")?;
    let pad_type = c.opt_string("pad_type")?.unwrap_or_else(|| "valid".into());
    let pad = c.opt_ints("pad")?.unwrap_or_default();
    if let Some(n) = n {
        check_pad_type(c, &pad_type, &pad, n)?;
    } else if !matches!(pad_type.as_str(), "valid" | "same" | "same_lower") {
        return Err(c.unsupported(format!("`pad_type` {pad_type} without `pad`")));
    }
    let bs = bias
        .as_ref()
        .map(host_f32)
        .transpose()
        .map_err(|e| c.error(e.to_string()))?;
    Ok(Box::new(move |a| {
        let (x, w) = (a[x], a[w]);
        let n = w.rank().saturating_sub(2);
        if !(1..=3).contains(&n) || x.rank() != n + 2 {
            candle_core::bail!("weight of shape {:?} for an input of shape {:?}", w.dims(), x.dims())
        }
        let (cout, cin_g) = (w.dims()[0], w.dims()[1]);
        if w.dims().contains(&0) || cout % groups != 0 || bs.as_ref().is_some_and(|b| b.len() != cout) {
            candle_core::bail!("weight of shape {:?} with {groups} groups and the bias given", w.dims())
        }
        check_channels(x, cin_g * groups, n)?;
        let pick = |p: &Option<Vec<i64>>| -> CResult<Vec<usize>> {
            match p {
                None => Ok(vec![1; n]),
                Some(v) if v.len() == n && v.iter().all(|&s| s >= 1) => Ok(v.iter().map(|&s| s as usize).collect()),
                Some(v) => candle_core::bail!("strides/dilations {v:?} for {n} spatial dims"),
            }
        };
        let (strides, dil) = (pick(&strides_p)?, pick(&dil_p)?);
        let kd = w.dims()[2..].to_vec();
        let pads = spatial_pads(&pad_type, &pad, &x.dims()[2..], &kd, &strides, &dil)?;
        let ws = host_f32(w)?;
        one(conv_direct(
            x,
            &ws,
            w.dims(),
            bs.as_deref(),
            groups,
            &strides,
            &dil,
            &pads,
        )?)
    }))
}

/// `conv_quantized`'s weight as floats: `linear` quantization is `w ·
/// quant_scale + quant_bias`, with one scale and bias for all weights or one
/// per output channel. `lut` is refused (coremltools documents no table layout).
fn dequantize_weight(c: &mut OpCtx, w: Tensor) -> Result<Tensor> {
    let kind = c.opt_string("quantization_type")?.unwrap_or_default();
    if kind != "linear" {
        return Err(c.unsupported(format!("`quantization_type` {kind} (linear is supported)")));
    }
    let nbits = c.opt_int("nbits")?.unwrap_or(8);
    if !(1..=8).contains(&nbits) {
        return Err(c.unsupported(format!("`nbits` {nbits} (1 to 8)")));
    }
    let cout = w.dims().first().copied().unwrap_or(0);
    let mut per = Vec::new();
    for arg in ["quant_scale", "quant_bias"] {
        let t = c
            .const_tensor(arg)?
            .ok_or_else(|| c.error(format!("required argument `{arg}` is missing")))?;
        let n = t.elem_count();
        if n != 1 && n != cout {
            return Err(c.unsupported(format!("`{arg}` of {n} values (1, or one per output channel: {cout})")));
        }
        let mut shape = vec![1usize; w.rank()];
        shape[0] = n;
        per.push(
            t.to_dtype(candle_core::DType::F32)
                .and_then(|t| t.reshape(shape))
                .map_err(|e| c.error(e.to_string()))?,
        );
    }
    let dt = per[0].dtype();
    w.to_dtype(dt)
        .and_then(|w| w.broadcast_mul(&per[0]))
        .and_then(|w| w.broadcast_add(&per[1]))
        .map_err(|e| c.error(e.to_string()))
}

/// Refuses a pad type the op does not define, or a custom `pad` of the wrong length.
fn check_pad_type(c: &OpCtx, pad_type: &str, pad: &[i64], n: usize) -> Result<()> {
    match pad_type {
        "valid" | "same" | "same_lower" => Ok(()),
        "custom" if pad.len() == 2 * n && pad.iter().all(|&p| p >= 0) => Ok(()),
        "custom" => Err(c.unsupported(format!("`pad` {pad:?} (2 x {n} non-negative values)"))),
        other => Err(c.unsupported(format!("`pad_type` {other} (valid, same, same_lower or custom)"))),
    }
}

/// `x` must be `[n, channels, *spatial]` with `n_sp` spatial dims.
fn check_channels(x: &Tensor, channels: usize, n_sp: usize) -> CResult<()> {
    if x.rank() != n_sp + 2 || x.dims()[1] != channels {
        candle_core::bail!(
            "input of shape {:?}; expected [N, {channels}] and {n_sp} spatial dims",
            x.dims()
        )
    }
    Ok(())
}

/// Direct convolution of any 1-3 spatial dims, strides, dilations, pads
/// and groups, on the host in f32 with f64 sums: `O(N·C_out·|out|·C_in/g·|K|)`.
/// For the shapes the candle paths above do not take.
#[allow(clippy::too_many_arguments)]
fn conv_direct(
    x: &Tensor,
    w: &[f32],
    wd: &[usize],
    bias: Option<&[f32]>,
    groups: usize,
    strides: &[usize],
    dil: &[usize],
    pads: &[(usize, usize)],
) -> CResult<Tensor> {
    let nsp = wd.len() - 2;
    let (nb, cin) = (x.dims()[0], x.dims()[1]);
    let (cout, cin_g) = (wd[0], wd[1]);
    let sp = &x.dims()[2..];
    let mut osp = Vec::with_capacity(nsp);
    for i in 0..nsp {
        osp.push(window_out(sp[i], pads[i], eff_kernel(wd[2 + i], dil[i]), strides[i])?);
    }
    let mut shape = vec![nb, cout];
    shape.extend(&osp);
    check_elems(&shape, "conv output")?;
    let xs = host_f32(x)?;
    let (i3, k3, o3) = (lift3(sp, 1), lift3(&wd[2..], 1), lift3(&osp, 1));
    let (s3, d3) = (lift3(strides, 1), lift3(dil, 1));
    let pb: Vec<usize> = pads.iter().map(|p| p.0).collect();
    let p3 = lift3(&pb, 0);
    let (isz, ksz, osz) = (
        i3.iter().product::<usize>(),
        k3.iter().product::<usize>(),
        o3.iter().product::<usize>(),
    );
    let cout_g = cout / groups;
    let mut out = vec![0f32; nb * cout * osz];
    for b in 0..nb {
        for co in 0..cout {
            let g = co / cout_g;
            for o0 in 0..o3[0] {
                for o1 in 0..o3[1] {
                    for o2 in 0..o3[2] {
                        let mut acc = bias.map_or(0f64, |bs| bs[co] as f64);
                        for ci in 0..cin_g {
                            let xbase = (b * cin + g * cin_g + ci) * isz;
                            let wbase = (co * cin_g + ci) * ksz;
                            for k0 in 0..k3[0] {
                                let Some(i0) = tap(o0, k0, s3[0], d3[0], p3[0], i3[0]) else {
                                    continue;
                                };
                                for k1 in 0..k3[1] {
                                    let Some(i1) = tap(o1, k1, s3[1], d3[1], p3[1], i3[1]) else {
                                        continue;
                                    };
                                    for k2 in 0..k3[2] {
                                        let Some(i2) = tap(o2, k2, s3[2], d3[2], p3[2], i3[2]) else {
                                            continue;
                                        };
                                        let xv = xs[xbase + (i0 * i3[1] + i1) * i3[2] + i2] as f64;
                                        acc += xv * w[wbase + (k0 * k3[1] + k1) * k3[2] + k2] as f64;
                                    }
                                }
                            }
                        }
                        out[((b * cout + co) * o3[0] + o0) * o3[1] * o3[2] + o1 * o3[2] + o2] = acc as f32;
                    }
                }
            }
        }
    }
    from_host(out, &shape, x)
}

/// The dilated kernel length `(k - 1) · d + 1`, saturating (sizes come from the program).
fn eff_kernel(k: usize, d: usize) -> usize {
    k.saturating_sub(1).saturating_mul(d).saturating_add(1)
}

/// Input index read by output `o`, kernel tap `k`, or `None` in the padding.
#[inline]
fn tap(o: usize, k: usize, s: usize, d: usize, pad_begin: usize, len: usize) -> Option<usize> {
    (o * s + k * d).checked_sub(pad_begin).filter(|&i| i < len)
}

/// Checks a conv or conv_transpose weight (rank 3–5, no empty dim) and
/// `groups`, which must divide the weight's first dim (`first` names it:
/// C_out for conv, C_in for conv_transpose). Returns the spatial rank and
/// the group count.
fn weight_groups(c: &mut OpCtx, wd: &[usize], first: &str) -> Result<(usize, usize)> {
    let groups = c.opt_int("groups")?.unwrap_or(1);
    let n = wd.len().saturating_sub(2);
    if !(1..=3).contains(&n) {
        return Err(c.unsupported(format!("`weight` of rank {} (1-, 2- or 3-D convolution)", wd.len())));
    }
    if wd.contains(&0) {
        return Err(c.unsupported(format!("`weight` of shape {wd:?} (an empty dim)")));
    }
    let d0 = wd[0];
    if groups < 1 || !d0.is_multiple_of(groups as usize) {
        return Err(c.unsupported(format!("`groups` {groups} (must divide {first} {d0})")));
    }
    Ok((n, groups as usize))
}

/// A bias, when given, holds one value per output channel.
fn check_bias(c: &OpCtx, bias: Option<&Tensor>, cout: usize) -> Result<()> {
    match bias {
        Some(b) if b.elem_count() != cout => Err(c.error(format!(
            "`bias` has {} values for {cout} output channels",
            b.elem_count()
        ))),
        _ => Ok(()),
    }
}

/// `conv_transpose`: the adjoint of `conv` (every input element scattered
/// through the kernel into the output), 1-3 spatial dims, any strides,
/// dilations, pads, groups and `output_shape`; weight `[C_in, C_out/groups,
/// *K]`. 2-D with one group and equal strides and dilations runs candle's
/// transposed conv; the rest is direct on the host:
/// `O(N·C_in·|in|·C_out/g·|K|)`.
pub(super) fn conv_transpose(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let w = c
        .const_tensor("weight")?
        .ok_or_else(|| c.error("`weight` must be a constant"))?;
    let bias = c.const_tensor("bias")?;
    let (n, groups) = weight_groups(c, w.dims(), "C_in")?;
    let (cin, cout_g) = (w.dims()[0], w.dims()[1]);
    let cout = cout_g * groups;
    check_bias(c, bias.as_ref(), cout)?;
    let (strides, dil, pad_type, pad) = spatial_params(c, n)?;
    if pad_type == "same_lower" {
        return Err(c.unsupported("`pad_type` same_lower (conv_transpose takes valid, same or custom)"));
    }
    check_pad_type(c, &pad_type, &pad, n)?;
    let output_shape = c.opt_ints("output_shape")?;
    if let Some(os) = &output_shape {
        let ok = (os.len() == n + 2 || os.len() == n) && os.iter().all(|&v| v >= 1);
        if !ok {
            return Err(c.unsupported(format!("`output_shape` {os:?} (N, C_out and {n} spatial sizes)")));
        }
    }
    let ws = host_f32(&w).map_err(|e| c.error(e.to_string()))?;
    let bs = bias
        .as_ref()
        .map(host_f32)
        .transpose()
        .map_err(|e| c.error(e.to_string()))?;
    let kd = w.dims()[2..].to_vec();
    // 2-D, one group, equal strides and dilations: candle's kernel.
    let fast = n == 2 && groups == 1 && strides[0] == strides[1] && dil[0] == dil[1];
    let candle_w = fast.then(|| w.clone());
    let bias_t = match (&bias, fast) {
        (Some(b), true) => Some(b.reshape((1, cout, 1, 1)).map_err(|e| c.error(e.to_string()))?),
        _ => None,
    };
    Ok(Box::new(move |a| {
        let x = a[x];
        check_channels(x, cin, n)?;
        let sp = x.dims()[2..].to_vec();
        if sp.contains(&0) {
            candle_core::bail!("input of shape {:?} has an empty spatial dim", x.dims())
        }
        let mut osp = Vec::with_capacity(n);
        let mut pb = Vec::with_capacity(n);
        for i in 0..n {
            let full = (sp[i] - 1)
                .saturating_mul(strides[i])
                .saturating_add(eff_kernel(kd[i], dil[i]));
            let want = output_shape.as_ref().map(|os| os[os.len() - n + i] as usize);
            let (begin, size) = match pad_type.as_str() {
                "same" => {
                    let size = want.unwrap_or(sp[i].saturating_mul(strides[i]));
                    (full.saturating_sub(size) / 2, size)
                }
                "custom" => {
                    let (b, e) = (pad[2 * i] as usize, pad[2 * i + 1] as usize);
                    (b, want.unwrap_or(full.saturating_sub(b + e)))
                }
                _ => (0, want.unwrap_or(full)),
            };
            pb.push(begin);
            osp.push(size);
        }
        let nb = x.dims()[0];
        let mut shape = vec![nb, cout];
        shape.extend(&osp);
        check_elems(&shape, "conv_transpose output")?;
        let full: Vec<usize> = (0..n)
            .map(|i| {
                (sp[i] - 1)
                    .saturating_mul(strides[i])
                    .saturating_add(eff_kernel(kd[i], dil[i]))
            })
            .collect();
        check_elems(&[nb, cout, full.iter().product()], "conv_transpose full output")?;
        // f32, 1-D or 2-D, any groups, strides, dilations and pads: the GEMM and col2im.
        if x.dtype() == CDType::F32 && n <= 2 {
            let one_d = n == 1;
            let pick = |v: &[usize]| if one_d { (1, v[0]) } else { (v[0], v[1]) };
            let win = conv_gemm::Window {
                kernel: pick(&kd),
                stride: pick(&strides),
                dilation: pick(&dil),
                pads: [(0, 0); 2],
            };
            let begin = if one_d { (0, pb[0]) } else { (pb[0], pb[1]) };
            let xc = x.contiguous()?;
            let y = depthwise::with_f32_slice(&xc, |xs| {
                let (h, w) = pick(&sp);
                conv_gemm::conv_transpose2d(
                    xs,
                    (nb, cin, h, w),
                    &ws,
                    cout,
                    groups,
                    &win,
                    begin,
                    pick(&osp),
                    bs.as_deref(),
                )
            })??;
            return one(Tensor::from_vec(y, shape, x.device())?);
        }
        if let Some(wc) = &candle_w {
            // candle's transposed conv gives the full output; the pads and
            // `output_shape` then crop it (or extend it with zeros).
            let mut y = x.conv_transpose2d(&wc.to_dtype(x.dtype())?, 0, 0, strides[0], dil[0])?;
            for i in 0..n {
                let avail = y.dims()[2 + i];
                let take = osp[i].min(avail.saturating_sub(pb[i]));
                y = y.narrow(2 + i, pb[i].min(avail), take)?;
                if take < osp[i] {
                    y = y.pad_with_zeros(2 + i, 0, osp[i] - take)?;
                }
            }
            if let Some(b) = &bias_t {
                y = par_elementwise::binary(BinOp::Add, &y, &b.to_dtype(x.dtype())?)?;
            }
            return one(y.contiguous()?);
        }
        let xs = host_f32(x)?;
        let (i3, k3, o3) = (lift3(&sp, 1), lift3(&kd, 1), lift3(&osp, 1));
        let (s3, d3, p3) = (lift3(&strides, 1), lift3(&dil, 1), lift3(&pb, 0));
        let (isz, ksz, osz) = (
            i3.iter().product::<usize>(),
            k3.iter().product::<usize>(),
            o3.iter().product::<usize>(),
        );
        let cin_g = cin / groups;
        let mut out = vec![0f64; nb * cout * osz];
        for b in 0..nb {
            for ci in 0..cin {
                let g = ci / cin_g;
                for i0 in 0..i3[0] {
                    for i1 in 0..i3[1] {
                        for i2 in 0..i3[2] {
                            let xv = xs[(b * cin + ci) * isz + (i0 * i3[1] + i1) * i3[2] + i2] as f64;
                            for co in 0..cout_g {
                                let obase = (b * cout + g * cout_g + co) * osz;
                                let wbase = (ci * cout_g + co) * ksz;
                                for k0 in 0..k3[0] {
                                    let Some(o0) = tap(i0, k0, s3[0], d3[0], p3[0], o3[0]) else {
                                        continue;
                                    };
                                    for k1 in 0..k3[1] {
                                        let Some(o1) = tap(i1, k1, s3[1], d3[1], p3[1], o3[1]) else {
                                            continue;
                                        };
                                        for k2 in 0..k3[2] {
                                            let Some(o2) = tap(i2, k2, s3[2], d3[2], p3[2], o3[2]) else {
                                                continue;
                                            };
                                            out[obase + (o0 * o3[1] + o1) * o3[2] + o2] +=
                                                xv * ws[wbase + (k0 * k3[1] + k1) * k3[2] + k2] as f64;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        if let Some(bs) = &bs {
            for (i, v) in out.iter_mut().enumerate() {
                *v += bs[(i / osz) % cout] as f64;
            }
        }
        one(from_host(out.into_iter().map(|v| v as f32).collect(), &shape, x)?)
    }))
}

/// A depthwise conv runs in our own kernel (see `depthwise`), with the
/// weights and bias flattened to f32 once here and the bias fused.
pub(super) fn depthwise_conv(
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
    // Shared by the plain kernel and the ones offered for fusion.
    let spec = DepthwiseSpec {
        x,
        ws: f32s(w).map_err(|e| c.error(e.to_string()))?.into(),
        bs: bias
            .map(f32s)
            .transpose()
            .map_err(|e| c.error(e.to_string()))?
            .map(Into::into),
        kernel: (kh, kw),
        pad_type,
        pad,
        stride,
        dilation,
    };
    c.depthwise = Some(spec.clone());
    let offer = spec.clone();
    c.offer = Some(Box::new(move |epi| depthwise_kernel(offer.clone(), epi)));
    Ok(depthwise_kernel(spec, Epi::act(Act::Identity)))
}

/// A depthwise conv's kernel with `epi` fused.
fn depthwise_kernel(d: DepthwiseSpec, epi: Epi) -> Kernel {
    Box::new(move |a| {
        let x = a[d.x];
        if x.rank() != 4 {
            candle_core::bail!("2-D conv of a tensor of shape {:?} (expected [n, c, h, w])", x.dims())
        }
        let (pads, (oh, ow)) = d.geometry((x.dims()[2], x.dims()[3]))?;
        let out_dims = [x.dims()[0], x.dims()[1], oh, ow];
        check_padded(x, &pads)?;
        let conv = |tail: Tail| {
            depthwise::depthwise_conv2d(x, &d.ws, d.kernel, d.bs.as_deref(), &pads, d.stride, d.dilation, tail)
        };
        // The kernel computes in f32: for another dtype the epilogue
        // runs after it (on the rounded values), as the unfused ops would.
        if x.dtype() != CDType::F32 {
            let y = epi.pre.apply(&conv(Tail::act(Act::Identity))?)?;
            return one(epi.finish_unfused(y, a)?);
        }
        if let Some(r) = epi.fast_residual(a, &out_dims)? {
            let y = depthwise::with_f32_slice(&r, |rs| {
                conv(Tail {
                    pre: epi.pre,
                    residual: Some(rs),
                    post: epi.post,
                })
            })??;
            return one(y);
        }
        one(epi.finish_unfused(conv(Tail::act(epi.pre))?, a)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
        d.max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn direct_conv_refuses_a_kernel_longer_than_the_padded_input() {
        let x = Tensor::zeros((1, 1, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = conv_direct(
            &x,
            &[0.0; 9],
            &[1, 1, 3, 3],
            None,
            1,
            &[1, 1],
            &[1, 1],
            &[(0, 0), (0, 0)],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("shorter than the dilated kernel"), "{e}");
        // One pad on each side makes it fit: a 2x2 output.
        let y = conv_direct(
            &x,
            &[1.0; 9],
            &[1, 1, 3, 3],
            None,
            1,
            &[1, 1],
            &[1, 1],
            &[(1, 1), (0, 1)],
        )
        .unwrap();
        assert_eq!(y.dims(), &[1, 1, 2, 1]);
    }

    /// A conv kernel built with an activation fused computes what the
    /// unfused conv followed by the activation computes, on the GEMM path
    /// (f32) and the candle path (f16), for odd windows and groups.
    #[test]
    fn fused_conv_kernels_match_conv_then_activation() {
        #[rustfmt::skip]
        let cases = [
            // (n, x dims, cout, groups, kernel, strides, dil, pad_type, pad)
            (2, vec![2, 5, 9, 7], 6, 1, vec![1, 1], vec![1, 1], vec![1, 1], "valid", vec![]),
            (2, vec![1, 4, 11, 8], 6, 2, vec![3, 3], vec![2, 2], vec![1, 1], "same", vec![]),
            (2, vec![1, 3, 10, 13], 5, 1, vec![5, 3], vec![1, 2], vec![2, 2], "custom", vec![1, 3, 0, 2]),
            (2, vec![1, 3, 8, 8], 4, 1, vec![1, 1], vec![2, 2], vec![1, 1], "valid", vec![]),
            (1, vec![2, 4, 19], 3, 1, vec![4], vec![3], vec![2], "same_lower", vec![]),
        ];
        for (n, xd, cout, groups, k, st, dil, pt, pad) in cases {
            let cin = xd[1];
            let mut wd = vec![cout, cin / groups];
            wd.extend(&k);
            let x = Tensor::randn(0f32, 2.0, xd.as_slice(), &Device::Cpu).unwrap();
            // Values an f16 weight holds exactly, so the packed (f16) form
            // below must give the very same output as the dense one.
            let w = Tensor::randn(0f32, 1.0, wd.as_slice(), &Device::Cpu)
                .unwrap()
                .to_dtype(CDType::F16)
                .unwrap();
            let w16: Vec<half::f16> = w.flatten_all().unwrap().to_vec1().unwrap();
            let w = w.to_dtype(CDType::F32).unwrap();
            let b = Tensor::randn(0f32, 1.0, cout, &Device::Cpu).unwrap();
            let mut bshape = vec![1, cout, 1];
            if n == 2 {
                bshape.push(1);
            }
            let g = General {
                x: 0,
                n,
                cin_g: cin / groups,
                cout,
                groups,
                kdims: k.clone(),
                strides: st.clone(),
                dil: dil.clone(),
                pad_type: pt.into(),
                pad: pad.clone(),
                host_bias: Some(b.to_vec1().unwrap()),
                bias: Some(b.reshape(bshape).unwrap()),
                w: Arc::new(Weights::dense(w).unwrap()),
            };
            let packed = General {
                w: Arc::new(Weights::new(wd.clone(), weights::Store::F16(w16), true).unwrap()),
                ..g.clone()
            };
            let xf = x.clone();
            assert_eq!(
                max_diff(
                    &g.clone().kernel(Epi::act(Act::Relu))(&[&xf]).unwrap()[0],
                    &packed.kernel(Epi::act(Act::Relu))(&[&xf]).unwrap()[0]
                ),
                0.0,
                "f16-stored weight, {xd:?} {k:?}"
            );
            for xt in [x.clone(), x.to_dtype(CDType::F16).unwrap()] {
                let plain = g.clone().kernel(Epi::act(Act::Identity))(&[&xt]).unwrap().remove(0);
                // The f32 GEMM path against candle's conv (the path before it).
                if xt.dtype() == CDType::F32 {
                    let spatial = &xt.dims()[2..];
                    let pads = spatial_pads(&g.pad_type, &g.pad, spatial, &g.kdims, &g.strides, &g.dil).unwrap();
                    let cand = g.on_candle(&xt, &pads).unwrap();
                    assert_eq!(plain.dims(), cand.dims());
                    assert!(max_diff(&plain, &cand) < 1e-4, "{xd:?} {k:?}");
                }
                for act in [
                    Act::Relu,
                    Act::Clamp(0.0, 6.0),
                    Act::Silu,
                    Act::SigmoidHard(0.2, 0.5),
                    Act::GeluErf,
                    Act::HardSwish(1.0 / 6.0, 0.5),
                ] {
                    let fused = g.clone().kernel(Epi::act(act))(&[&xt]).unwrap().remove(0);
                    let want = act.apply(&plain).unwrap();
                    assert_eq!((fused.dims(), fused.dtype()), (want.dims(), want.dtype()));
                    let (f, w) = (
                        fused.to_dtype(CDType::F32).unwrap(),
                        want.to_dtype(CDType::F32).unwrap(),
                    );
                    assert_eq!(max_diff(&f, &w), 0.0, "{xd:?} {k:?} {act:?} {:?}", xt.dtype());
                }
                // A fused residual add: a same-shape f32 one in the epilogue,
                // a broadcast one or another dtype as the add op computes it.
                let od = plain.dims().to_vec();
                let mut bd = vec![1; od.len()];
                bd[1] = cout;
                for (rd, producer_is_x) in [(od.clone(), true), (od.clone(), false), (bd, true)] {
                    let r = Tensor::randn(0f32, 1.0, rd.as_slice(), &Device::Cpu).unwrap();
                    let epi = Epi {
                        pre: Act::Clamp(0.0, 6.0),
                        residual: Some(crate::mil::fuse::Residual {
                            operand: 1,
                            producer_is_x,
                        }),
                        post: Act::Relu,
                    };
                    let fused = g.clone().kernel(epi)(&[&xt, &r]).unwrap().remove(0);
                    let pre = epi.pre.apply(&plain).unwrap();
                    // The add op converts its `y` to `x`'s dtype.
                    let sum = if producer_is_x {
                        pre.broadcast_add(&r.to_dtype(pre.dtype()).unwrap())
                    } else {
                        r.broadcast_add(&pre.to_dtype(r.dtype()).unwrap())
                    };
                    let want = Act::Relu.apply(&sum.unwrap()).unwrap();
                    assert_eq!((fused.dims(), fused.dtype()), (want.dims(), want.dtype()));
                    let (f, w) = (
                        fused.to_dtype(CDType::F32).unwrap(),
                        want.to_dtype(CDType::F32).unwrap(),
                    );
                    assert_eq!(max_diff(&f, &w), 0.0, "{xd:?} {k:?} residual {rd:?}");
                }
            }
        }
    }

    /// The step a pointwise conv and the depthwise conv reading it become
    /// gives the very bits of the two kernels run in turn: on the banded
    /// path (f32, a large expanded activation), with a residual fused or
    /// added after, with f16-stored expansion weights, and on the
    /// fallbacks (an f16 input, a small image).
    #[test]
    fn expand_then_depthwise_matches_the_two_kernels() {
        let bits = |t: &Tensor| -> Vec<u32> {
            let v: Vec<f32> = t
                .to_dtype(CDType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            v.into_iter().map(f32::to_bits).collect()
        };
        // (cin, ch, h, w, k, stride, pad_type, pad, banded): expanded activations over 2 MiB band.
        #[rustfmt::skip]
        let cases = [
            (7, 96, 81, 77, 3, 2, "same", vec![], true),
            (5, 112, 75, 70, 5, 1, "custom", vec![2, 1, 3, 2], true),
            (6, 24, 17, 19, 3, 1, "same", vec![], false),
        ];
        for (cin, ch, h, w, k, s, pad_type, pad, banded) in cases {
            let x = Tensor::randn(0f32, 1.0, (1, cin, h, w), &Device::Cpu).unwrap();
            let pw_w = Tensor::randn(0f32, 1.0, (ch, cin, 1, 1), &Device::Cpu)
                .unwrap()
                .to_dtype(CDType::F16)
                .unwrap();
            let w16: Vec<half::f16> = pw_w.flatten_all().unwrap().to_vec1().unwrap();
            let pw_w = pw_w.to_dtype(CDType::F32).unwrap();
            let pw_b = Tensor::randn(0f32, 1.0, ch, &Device::Cpu).unwrap();
            let g = General {
                x: 0,
                n: 2,
                cin_g: cin,
                cout: ch,
                groups: 1,
                kdims: vec![1, 1],
                strides: vec![1, 1],
                dil: vec![1, 1],
                pad_type: "valid".into(),
                pad: vec![],
                host_bias: Some(pw_b.to_vec1().unwrap()),
                bias: Some(pw_b.reshape((1, ch, 1, 1)).unwrap()),
                w: Arc::new(Weights::dense(pw_w).unwrap()),
            };
            assert!(g.is_pointwise());
            let f16_stored = General {
                w: Arc::new(Weights::new(vec![ch, cin, 1, 1], weights::Store::F16(w16), true).unwrap()),
                ..g.clone()
            };
            let dw_w: Vec<f32> = Tensor::randn(0f32, 1.0, ch * k * k, &Device::Cpu)
                .unwrap()
                .to_vec1()
                .unwrap();
            let dw_b: Vec<f32> = Tensor::randn(0f32, 1.0, ch, &Device::Cpu).unwrap().to_vec1().unwrap();
            let d = DepthwiseSpec {
                x: 0,
                ws: dw_w.into(),
                bs: Some(dw_b.into()),
                kernel: (k, k),
                pad_type: pad_type.into(),
                pad,
                stride: s,
                dilation: 1,
            };
            let (dw_pads, (oh, ow)) = d.geometry((h, w)).unwrap();
            let on_bands = depthwise::expand::applies((cin, ch), (h, w), (k, k), &dw_pads, (s, 1));
            assert_eq!(on_bands, banded, "{cin} → {ch} at {h}×{w}");
            let same = Tensor::randn(0f32, 1.0, (1, ch, oh, ow), &Device::Cpu).unwrap();
            let row = Tensor::randn(0f32, 1.0, (1, ch, 1, ow), &Device::Cpu).unwrap();
            let pw_epi = Epi::act(Act::Clamp(0.0, 6.0));
            let residual = |producer_is_x| {
                Some(crate::mil::fuse::Residual {
                    operand: 1,
                    producer_is_x,
                })
            };
            let epis = [
                (Epi::act(Act::Clamp(0.0, 6.0)), None),
                (
                    Epi {
                        pre: Act::Relu,
                        residual: residual(true),
                        post: Act::Silu,
                    },
                    Some(&same),
                ),
                // Broadcast: added after the kernel, as the add op would.
                (
                    Epi {
                        pre: Act::Identity,
                        residual: residual(false),
                        post: Act::Identity,
                    },
                    Some(&row),
                ),
            ];
            for (epi, r) in epis {
                for xt in [x.clone(), x.to_dtype(CDType::F16).unwrap()] {
                    for pw in [&g, &f16_stored] {
                        let mut args = vec![&xt];
                        args.extend(r);
                        let mid = pw.clone().kernel(pw_epi)(&[&xt]).unwrap().remove(0);
                        let mut dargs = vec![&mid];
                        dargs.extend(r);
                        let want = depthwise_kernel(d.clone(), epi)(&dargs).unwrap().remove(0);
                        let got = expand_then_depthwise(
                            &Pointwise {
                                conv: pw.clone(),
                                declared: None,
                            },
                            pw_epi,
                            &d,
                            epi,
                        )(&args)
                        .unwrap()
                        .remove(0);
                        assert_eq!(got.dims(), want.dims());
                        assert_eq!(got.dtype(), want.dtype());
                        assert!(
                            bits(&got) == bits(&want),
                            "{cin} → {ch} at {h}×{w}, {k}×{k} s{s}, {:?}, {epi:?}",
                            xt.dtype()
                        );
                    }
                }
            }
        }
    }
}
