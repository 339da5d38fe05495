//! Recurrent layers (coremltools `recurrent.py`): `rnn`, `gru`, `lstm`
//! (iOS15; iOS17 adds fp16; iOS18's `gru` adds `reset_after` and
//! `input_bias`).
//!
//! Conventions: `x` is `[seq, batch, input]`, states `[batch, D*H]` (`D` = 2
//! for a bidirectional `lstm`, forward half first). Weights are constants,
//! gate-stacked along dim 0: `rnn` one gate, `gru` `[r, o, z]`, `lstm`
//! `[i, f, o, z]` (input, forget, output, cell); `lstm` `peephole` is
//! `[i, f, o]`. Outputs: the hidden states `[seq or 1, batch, D*H]`, the final
//! `h` `[batch, D*H]`, and for `lstm` the final `c`.
//!
//! Semantics where the definitions are brief, as coremltools' own tests
//! check them: a `reverse` layer emits its sequence output in processing
//! order (step k holds the state after reading `x[seq-1-k]`), whereas the
//! backward half of a `bidirectional` one is aligned with the input (step k
//! holds the state after reading `x[k]`; its last-step output is the state
//! after `x[0]`). Peepholes feed `c[t-1]` to the input and forget gates and
//! `c[t]` to the output gate. `clip` clamps the cell state `c[t]` to
//! `[-clip, clip]` before it is used and returned. Activations take their
//! standard parameters: `scaled_tanh` is `tanh` (alpha = beta = 1),
//! `hard_sigmoid` (also spelled `sigmoid_hard`) is `clamp(0.2 v + 0.5, 0, 1)`,
//! `linear` the identity. `gru`'s output gate is
//! `act(W_o x + b_io + W_ho (r * h) + b_o)`, or with `reset_after`
//! `act(W_o x + b_io + r * (W_ho h + b_o))`; `bias` and `input_bias` are
//! otherwise summed.
//!
//! Kernel: everything is computed in f32 and returned in `x`'s dtype. The
//! input projection of all steps is one matmul; each step then does one
//! (two for a reset-before `gru`) `[batch, H]` matmul and the gate math on
//! host vectors.

use candle_core::{DType, Device, Tensor};

use super::{check_alloc, Builder, CResult};
use crate::error::Result;
use crate::mil::limits::check_cancel;
use crate::mil::{Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "rnn" => rnn,
        "gru" => gru,
        "lstm" => lstm,
        _ => return None,
    })
}

/// An activation a recurrent op names by string.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Sigmoid,
    Tanh,
    Relu,
    HardSigmoid,
    Linear,
}

impl Act {
    fn apply(self, v: f32) -> f32 {
        match self {
            Act::Sigmoid => 1.0 / (1.0 + (-v).exp()),
            Act::Tanh => v.tanh(),
            Act::Relu => v.max(0.0),
            Act::HardSigmoid => (0.2 * v + 0.5).clamp(0.0, 1.0),
            Act::Linear => v,
        }
    }
}

/// Reads activation parameter `arg` (default `default`).
fn activation(c: &mut OpCtx, arg: &str, default: Act) -> Result<Act> {
    let Some(s) = c.opt_string(arg)? else {
        return Ok(default);
    };
    Ok(match s.to_ascii_lowercase().as_str() {
        "sigmoid" => Act::Sigmoid,
        // scaled_tanh with its default alpha = beta = 1.
        "tanh" | "scaled_tanh" => Act::Tanh,
        "relu" => Act::Relu,
        "hard_sigmoid" | "sigmoid_hard" => Act::HardSigmoid,
        "linear" => Act::Linear,
        _ => {
            return Err(c.unsupported(format!(
                "parameter `{arg}` = `{s}`; expected sigmoid, tanh, relu, scaled_tanh, hard_sigmoid or linear"
            )))
        }
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    Forward,
    Reverse,
    Bidirectional,
}

fn direction(c: &mut OpCtx, bidirectional_ok: bool) -> Result<Direction> {
    let s = c.opt_string("direction")?.unwrap_or_else(|| "forward".into());
    Ok(match s.as_str() {
        "forward" => Direction::Forward,
        "reverse" => Direction::Reverse,
        "bidirectional" if bidirectional_ok => Direction::Bidirectional,
        _ => {
            let allowed = if bidirectional_ok {
                "forward, reverse or bidirectional"
            } else {
                "forward or reverse"
            };
            return Err(c.unsupported(format!("parameter `direction` = `{s}`; expected {allowed}")));
        }
    })
}

/// One direction's constants, in f32.
struct Weights {
    /// `weight_ih` transposed: `[I, G*H]`.
    wih_t: Tensor,
    /// `weight_hh` transposed: `[H, G*H]`; for a reset-before `gru` only
    /// its r and z columns (`[H, 2*H]`), `W_ho` being in `who_t`.
    whh_t: Tensor,
    /// A reset-before `gru`'s `W_ho` transposed (`[H, H]`).
    who_t: Option<Tensor>,
    /// Added to the input projection (`[G*H]`).
    bias_in: Vec<f32>,
    /// Added to the hidden projection (`[G*H]`): only `gru` with
    /// `reset_after` has a bias that is not simply additive.
    bias_h: Option<Vec<f32>>,
    /// `lstm` peephole `[3*H]` (`[i, f, o]`).
    peephole: Option<Vec<f32>>,
}

/// Reads a required constant weight and checks its shape is `[rows, cols]`
/// (`cols` None: any).
fn weight(c: &mut OpCtx, arg: &str, rows: Option<usize>, cols: Option<usize>) -> Result<Tensor> {
    let w = c
        .const_tensor(arg)?
        .ok_or_else(|| c.error(format!("`{arg}` is required and must be a constant")))?;
    let ok = w.rank() == 2 && rows.is_none_or(|r| w.dims()[0] == r) && cols.is_none_or(|k| w.dims()[1] == k);
    if !ok {
        return Err(c.error(format!(
            "`{arg}` has shape {:?}; expected [{}, {}]",
            w.dims(),
            rows.map_or("rows".into(), |r| r.to_string()),
            cols.map_or("cols".into(), |k| k.to_string())
        )));
    }
    w.to_dtype(DType::F32).map_err(|e| c.error(e.to_string()))
}

/// Reads an optional constant vector of `len` values (zeros when absent).
fn vector(c: &mut OpCtx, arg: &str, len: usize) -> Result<Option<Vec<f32>>> {
    let Some(v) = c.const_tensor(arg)? else { return Ok(None) };
    if v.elem_count() != len || v.rank() != 1 {
        return Err(c.error(format!("`{arg}` has shape {:?}; expected [{len}]", v.dims())));
    }
    let v = v
        .to_dtype(DType::F32)
        .and_then(|v| v.to_vec1::<f32>())
        .map_err(|e| c.error(e.to_string()))?;
    Ok(Some(v))
}

/// Reads one direction's weights (`suffix` "" or "_back") for `gates` gates;
/// `hidden` is taken from `weight_hh` when None. Returns them and H.
fn read_weights(c: &mut OpCtx, suffix: &str, gates: usize, hidden: Option<usize>) -> Result<(Weights, usize)> {
    let whh = weight(c, &format!("weight_hh{suffix}"), None, hidden)?;
    let h = whh.dims()[1];
    if h == 0 || whh.dims()[0] != gates * h {
        return Err(c.error(format!(
            "`weight_hh{suffix}` has shape {:?}; expected [{gates}*H, H] with H > 0",
            whh.dims()
        )));
    }
    let wih = weight(c, &format!("weight_ih{suffix}"), Some(gates * h), None)?;
    let bias = vector(c, &format!("bias{suffix}"), gates * h)?.unwrap_or_else(|| vec![0.0; gates * h]);
    let t = |w: Tensor| w.t().and_then(|w| w.contiguous());
    let (wih_t, whh_t) = (t(wih), t(whh));
    let (wih_t, whh_t) = (
        wih_t.map_err(|e| c.error(e.to_string()))?,
        whh_t.map_err(|e| c.error(e.to_string()))?,
    );
    let w = Weights {
        wih_t,
        whh_t,
        bias_in: bias,
        who_t: None,
        bias_h: None,
        peephole: None,
    };
    Ok((w, h))
}

/// The step function of one cell kind: from the step's input projection
/// `xp` (`[b, G*H]`, biases in), the previous state and the weights, update
/// `h` (and `c`) in place.
enum Cell {
    Rnn {
        act: Act,
    },
    Gru {
        rec: Act,
        act: Act,
        reset_after: bool,
    },
    Lstm {
        rec: Act,
        cell: Act,
        act: Act,
        clip: Option<f32>,
    },
}

/// `[rows, k] @ w_t` on host data, as a host vector `[rows, n]`.
fn host_matmul(a: &[f32], rows: usize, w_t: &Tensor) -> CResult<Vec<f32>> {
    let k = w_t.dims()[0];
    let at = Tensor::from_slice(a, (rows, k), &Device::Cpu)?;
    at.matmul(w_t)?.flatten_all()?.to_vec1::<f32>()
}

impl Cell {
    fn gates(&self) -> usize {
        match self {
            Cell::Rnn { .. } => 1,
            Cell::Gru { .. } => 3,
            Cell::Lstm { .. } => 4,
        }
    }

    /// One step for the whole batch.
    fn step(&self, w: &Weights, xp: &[f32], b: usize, h: &mut [f32], cs: &mut [f32]) -> CResult<()> {
        let hs = h.len() / b.max(1);
        let g = self.gates() * hs;
        let mut hp = host_matmul(h, b, &w.whh_t)?;
        // Row stride of `hp`: G*H, or 2*H for a reset-before gru.
        let hg = w.whh_t.dims()[1];
        if let Some(bias_h) = &w.bias_h {
            for (col, v) in hp.chunks_mut(hg).flat_map(|r| r.iter_mut().enumerate()) {
                *v += bias_h[col];
            }
        }
        match *self {
            Cell::Rnn { act } => {
                for (i, hv) in h.iter_mut().enumerate() {
                    *hv = act.apply(xp[i] + hp[i]);
                }
            }
            Cell::Gru { rec, act, reset_after } => {
                // Gate blocks of `xp`: r, o, z; of `hp`: r, o, z, or r, z
                // for a reset-before gru.
                let zo = if reset_after { 2 * hs } else { hs };
                let mut r = vec![0f32; b * hs];
                for n in 0..b {
                    for j in 0..hs {
                        r[n * hs + j] = rec.apply(xp[n * g + j] + hp[n * hg + j]);
                    }
                }
                // Reset before the product: W_ho (r * h), a second matmul.
                let ho = match (reset_after, &w.who_t) {
                    (false, Some(who_t)) => {
                        let rh: Vec<f32> = r.iter().zip(h.iter()).map(|(a, b)| a * b).collect();
                        Some(host_matmul(&rh, b, who_t)?)
                    }
                    (false, None) => candle_core::bail!("reset-before gru without W_ho"),
                    _ => None,
                };
                for n in 0..b {
                    for j in 0..hs {
                        let k = n * hs + j;
                        let z = rec.apply(xp[n * g + 2 * hs + j] + hp[n * hg + zo + j]);
                        let hidden = match &ho {
                            Some(ho) => ho[k],
                            None => r[k] * hp[n * hg + hs + j],
                        };
                        let o = act.apply(xp[n * g + hs + j] + hidden);
                        h[k] = (1.0 - z) * o + z * h[k];
                    }
                }
            }
            Cell::Lstm { rec, cell, act, clip } => {
                // Gate blocks: i, f, o, z; peephole blocks: i, f, o.
                let p = |gate: usize, j: usize| w.peephole.as_ref().map_or(0.0, |p| p[gate * hs + j]);
                for n in 0..b {
                    for j in 0..hs {
                        let k = n * hs + j;
                        let pre = |gate: usize| xp[n * g + gate * hs + j] + hp[n * hg + gate * hs + j];
                        let c_prev = cs[k];
                        let i = rec.apply(pre(0) + c_prev * p(0, j));
                        let f = rec.apply(pre(1) + c_prev * p(1, j));
                        let z = cell.apply(pre(3));
                        let mut c_new = f * c_prev + i * z;
                        if let Some(t) = clip {
                            c_new = c_new.clamp(-t, t);
                        }
                        let o = rec.apply(pre(2) + c_new * p(2, j));
                        cs[k] = c_new;
                        h[k] = o * act.apply(c_new);
                    }
                }
            }
        }
        Ok(())
    }
}

/// A whole layer: its cell and one or two directions' weights.
struct Layer {
    cell: Cell,
    dir: Direction,
    fwd: Weights,
    back: Option<Weights>,
    hidden: usize,
    input: usize,
    seq_out: bool,
}

/// Runs one direction over `x` (`[s, b, I]` f32 host), from `h0`/`c0`
/// (`[b, H]`); returns every step's `h` in processing order, and the final
/// `h`, `c`.
fn run_dir(
    l: &Layer,
    w: &Weights,
    x: &Tensor,
    rev: bool,
    mut h: Vec<f32>,
    mut cs: Vec<f32>,
) -> CResult<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let (s, b, i) = x.dims3()?;
    let g = l.cell.gates() * l.hidden;
    check_alloc("recurrent input projection", &[s, b, g], 4)?;
    // All steps' input projections in one matmul.
    let mut xp = x
        .reshape((s * b, i))?
        .matmul(&w.wih_t)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    for (col, v) in xp.chunks_mut(g).flat_map(|r| r.iter_mut().enumerate()) {
        *v += w.bias_in[col];
    }
    let step_len = b * l.hidden;
    let mut seq = Vec::with_capacity(s * step_len);
    for k in 0..s {
        check_cancel()?;
        let t = if rev { s - 1 - k } else { k };
        l.cell.step(w, &xp[t * b * g..(t + 1) * b * g], b, &mut h, &mut cs)?;
        seq.extend_from_slice(&h);
    }
    Ok((seq, h, cs))
}

/// Splits a `[b, D*H]` state into direction `d`'s `[b, H]` part.
fn half(state: &[f32], b: usize, hs: usize, dirs: usize, d: usize) -> Vec<f32> {
    (0..b)
        .flat_map(|n| state[(n * dirs + d) * hs..(n * dirs + d + 1) * hs].iter().copied())
        .collect()
}

fn state_of(t: &Tensor, b: usize, width: usize, what: &str) -> CResult<Vec<f32>> {
    if t.dims() != [b, width] {
        candle_core::bail!("{what} of shape {:?}; expected [{b}, {width}]", t.dims())
    }
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

impl Layer {
    fn run(&self, x: &Tensor, h0: &Tensor, c0: Option<&Tensor>) -> CResult<Vec<Tensor>> {
        let out_dt = x.dtype();
        if x.rank() != 3 || x.dims()[2] != self.input {
            candle_core::bail!("x of shape {:?}; expected [seq, batch, {}]", x.dims(), self.input)
        }
        let (s, b, _) = x.dims3()?;
        if s == 0 {
            // There is no last step to return.
            candle_core::bail!("x of shape {:?}: an empty sequence", x.dims())
        }
        let (hs, dirs) = (self.hidden, if self.dir == Direction::Bidirectional { 2 } else { 1 });
        let width = dirs * hs;
        let s_out = if self.seq_out { s } else { 1 };
        check_alloc("recurrent output", &[s_out.max(s), b, width], 4)?;
        let h0 = state_of(h0, b, width, "initial_h")?;
        let c0 = match c0 {
            Some(c0) => state_of(c0, b, width, "initial_c")?,
            None => vec![0.0; b * width],
        };
        let xf = x.to_dtype(DType::F32)?;
        let mut y = vec![0f32; s_out * b * width];
        let (mut hn, mut cn) = (vec![0f32; b * width], vec![0f32; b * width]);
        for d in 0..dirs {
            let (w, rev) = match (d, self.dir) {
                (0, Direction::Reverse) => (&self.fwd, true),
                (0, _) => (&self.fwd, false),
                _ => match &self.back {
                    Some(back) => (back, true),
                    None => candle_core::bail!("bidirectional layer without backward weights"),
                },
            };
            let (seq, h, c) = run_dir(self, w, &xf, rev, half(&h0, b, hs, dirs, d), half(&c0, b, hs, dirs, d))?;
            let step_len = b * hs;
            for t in 0..s_out {
                // Processing step that lands at output step t.
                let k = match (self.seq_out, d) {
                    (false, _) => s - 1,
                    (true, 1) => s - 1 - t, // backward half aligned with the input
                    (true, _) => t,
                };
                for n in 0..b {
                    let src = &seq[k * step_len + n * hs..k * step_len + (n + 1) * hs];
                    let at = (t * b + n) * width + d * hs;
                    y[at..at + hs].copy_from_slice(src);
                }
            }
            for n in 0..b {
                let at = n * width + d * hs;
                hn[at..at + hs].copy_from_slice(&h[n * hs..(n + 1) * hs]);
                cn[at..at + hs].copy_from_slice(&c[n * hs..(n + 1) * hs]);
            }
        }
        let dev = &Device::Cpu;
        let mut outs = vec![
            Tensor::from_vec(y, (s_out, b, width), dev)?.to_dtype(out_dt)?,
            Tensor::from_vec(hn, (b, width), dev)?.to_dtype(out_dt)?,
        ];
        if matches!(self.cell, Cell::Lstm { .. }) {
            outs.push(Tensor::from_vec(cn, (b, width), dev)?.to_dtype(out_dt)?);
        }
        Ok(outs)
    }
}

fn kernel(layer: Layer, x: usize, h0: usize, c0: Option<usize>) -> Kernel {
    Box::new(move |a| layer.run(a[x], a[h0], c0.map(|c| a[c])))
}

fn output_sequence(c: &mut OpCtx) -> Result<bool> {
    Ok(c.opt_bool("output_sequence")?.unwrap_or(false))
}

pub(super) fn rnn(c: &mut OpCtx) -> Result<Kernel> {
    let (x, h0) = (c.tensor("x")?, c.tensor("initial_h")?);
    let dir = direction(c, false)?;
    let seq_out = output_sequence(c)?;
    let act = activation(c, "activation", Act::Tanh)?;
    let (fwd, hidden) = read_weights(c, "", 1, None)?;
    let input = fwd.wih_t.dims()[0];
    let layer = Layer {
        cell: Cell::Rnn { act },
        dir,
        fwd,
        back: None,
        hidden,
        input,
        seq_out,
    };
    Ok(kernel(layer, x, h0, None))
}

pub(super) fn gru(c: &mut OpCtx) -> Result<Kernel> {
    let (x, h0) = (c.tensor("x")?, c.tensor("initial_h")?);
    let dir = direction(c, false)?;
    let seq_out = output_sequence(c)?;
    let rec = activation(c, "recurrent_activation", Act::Sigmoid)?;
    let act = activation(c, "activation", Act::Tanh)?;
    let reset_after = c.opt_bool("reset_after")?.unwrap_or(false);
    let (mut fwd, hidden) = read_weights(c, "", 3, None)?;
    let input = fwd.wih_t.dims()[0];
    let input_bias = vector(c, "input_bias", 3 * hidden)?.unwrap_or_else(|| vec![0.0; 3 * hidden]);
    if reset_after {
        // `bias` acts inside the reset product of the o gate: it goes to
        // the hidden side (for r and z the side makes no difference).
        fwd.bias_h = Some(std::mem::replace(&mut fwd.bias_in, input_bias));
    } else {
        // Every bias is additive: all on the input side. `W_ho` is split
        // off for the `W_ho (r * h)` product; the per-step `h` product
        // keeps the r and z columns.
        for (b, v) in fwd.bias_in.iter_mut().zip(input_bias) {
            *b += v;
        }
        let split = (|| {
            let who = fwd.whh_t.narrow(1, hidden, hidden)?.contiguous()?;
            let (wr, wz) = (
                fwd.whh_t.narrow(1, 0, hidden)?,
                fwd.whh_t.narrow(1, 2 * hidden, hidden)?,
            );
            CResult::Ok((who, Tensor::cat(&[&wr, &wz], 1)?.contiguous()?))
        })();
        let (who, wrz) = split.map_err(|e| c.error(e.to_string()))?;
        fwd.who_t = Some(who);
        fwd.whh_t = wrz;
    }
    let layer = Layer {
        cell: Cell::Gru { rec, act, reset_after },
        dir,
        fwd,
        back: None,
        hidden,
        input,
        seq_out,
    };
    Ok(kernel(layer, x, h0, None))
}

pub(super) fn lstm(c: &mut OpCtx) -> Result<Kernel> {
    let (x, h0, c0) = (c.tensor("x")?, c.tensor("initial_h")?, c.tensor("initial_c")?);
    let dir = direction(c, true)?;
    let seq_out = output_sequence(c)?;
    let rec = activation(c, "recurrent_activation", Act::Sigmoid)?;
    let cell = activation(c, "cell_activation", Act::Tanh)?;
    let act = activation(c, "activation", Act::Tanh)?;
    let clip = c.opt_float("clip")?.map(|v| v as f32);
    if let Some(t) = clip {
        if t.is_nan() || t < 0.0 {
            return Err(c.error(format!("`clip` = {t}; expected a non-negative threshold")));
        }
    }
    let (mut fwd, hidden) = read_weights(c, "", 4, None)?;
    fwd.peephole = vector(c, "peephole", 3 * hidden)?;
    let input = fwd.wih_t.dims()[0];
    let back = if dir == Direction::Bidirectional {
        let (mut back, _) = read_weights(c, "_back", 4, Some(hidden))?;
        if back.wih_t.dims()[0] != input {
            return Err(c.error(format!(
                "`weight_ih_back` takes {} inputs; `weight_ih` takes {input}",
                back.wih_t.dims()[0]
            )));
        }
        back.peephole = vector(c, "peephole_back", 3 * hidden)?;
        Some(back)
    } else {
        None
    };
    let layer = Layer {
        cell: Cell::Lstm { rec, cell, act, clip },
        dir,
        fwd,
        back,
        hidden,
        input,
        seq_out,
    };
    Ok(kernel(layer, x, h0, Some(c0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
    }

    /// A one-unit linear rnn: h[t] = w x[t] + u h[t-1] + b, by hand.
    fn linear_rnn(dir: Direction, seq_out: bool) -> Layer {
        Layer {
            cell: Cell::Rnn { act: Act::Linear },
            dir,
            fwd: Weights {
                wih_t: t(&[2.0], &[1, 1]),
                whh_t: t(&[0.5], &[1, 1]),
                who_t: None,
                bias_in: vec![1.0],
                bias_h: None,
                peephole: None,
            },
            back: None,
            hidden: 1,
            input: 1,
            seq_out,
        }
    }

    fn vals(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn rnn_steps_by_hand_forward_and_reverse() {
        let x = t(&[1.0, 2.0, 3.0], &[3, 1, 1]);
        let h0 = t(&[4.0], &[1, 1]);
        // forward: 2+0.5*4+1 = 5; 4+2.5+1 = 7.5; 6+3.75+1 = 10.75
        let out = linear_rnn(Direction::Forward, true).run(&x, &h0, None).unwrap();
        assert_eq!(vals(&out[0]), [5.0, 7.5, 10.75]);
        assert_eq!(vals(&out[1]), [10.75]);
        // reverse reads x[2], x[1], x[0] and emits in that order:
        // 6+2+1 = 9; 4+4.5+1 = 9.5; 2+4.75+1 = 7.75
        let out = linear_rnn(Direction::Reverse, true).run(&x, &h0, None).unwrap();
        assert_eq!(vals(&out[0]), [9.0, 9.5, 7.75]);
        let out = linear_rnn(Direction::Reverse, false).run(&x, &h0, None).unwrap();
        assert_eq!(out[0].dims(), [1, 1, 1]);
        assert_eq!(vals(&out[0]), [7.75]);
    }

    #[test]
    fn bad_run_time_shapes_are_errors() {
        let l = linear_rnn(Direction::Forward, false);
        let h0 = t(&[0.0], &[1, 1]);
        // input size, state shape, empty sequence, rank
        assert!(l.run(&t(&[1.0, 2.0], &[1, 1, 2]), &h0, None).is_err());
        assert!(l.run(&t(&[1.0, 2.0], &[1, 2, 1]), &h0, None).is_err());
        assert!(l.run(&t(&[], &[0, 1, 1]), &h0, None).is_err());
        assert!(l.run(&t(&[1.0], &[1, 1]), &h0, None).is_err());
    }

    #[test]
    fn activations_use_standard_parameters() {
        assert_eq!(Act::HardSigmoid.apply(1.0), 0.7);
        assert_eq!(Act::HardSigmoid.apply(10.0), 1.0);
        assert_eq!(Act::HardSigmoid.apply(-10.0), 0.0);
        assert_eq!(Act::Relu.apply(-2.0), 0.0);
        assert_eq!(Act::Linear.apply(-2.0), -2.0);
        assert!((Act::Sigmoid.apply(0.0) - 0.5).abs() < 1e-7);
    }

    #[test]
    fn half_takes_one_direction_of_a_bidirectional_state() {
        // b = 2, H = 2, D = 2: rows [f0 f1 b0 b1]
        let s = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        assert_eq!(half(&s, 2, 2, 2, 0), [1.0, 2.0, 5.0, 6.0]);
        assert_eq!(half(&s, 2, 2, 2, 1), [3.0, 4.0, 7.0, 8.0]);
    }
}
