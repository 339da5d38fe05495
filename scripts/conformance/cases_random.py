"""Cases for coremltools' iOS15/random.py: random_bernoulli, random_categorical, random_normal,
random_uniform.

Their values cannot match Apple's generator (it is not public), so these are `distribution`
cases (see case.py): the output's shape and dtype are exact, every value lies in the
distribution's support, and the sample mean and standard deviation (and, for discrete
distributions, each value's frequency) lie within 6 standard errors of the values the op's
parameters imply for the case's sample count -- a false failure has odds below 1e-8. The
harness also checks that the same seed gives the same samples on two plan builds.

A random op with a constant `shape` has no input; the programs add it to a zero input `x` of
shape (1,) (an exact no-op), or take `shape` itself as the input."""

from __future__ import annotations

import math

import numpy as np
from coremltools.converters.mil import Builder as mb

from caselib import Case, f64

FAM = "random"
Z = 6.0  # standard errors


def moments(n: int, mean: float, var: float, mu4: float, slack: float = 0.0) -> dict:
    """Bounds on the sample mean and std of n iid samples with the given mean, variance and
    fourth central moment (the variance of the sample variance is (mu4 - var^2) / n)."""
    dm = Z * math.sqrt(var / n) + slack
    dv = Z * math.sqrt(max(mu4 - var * var, 0.0) / n)
    return {"mean": [mean - dm, mean + dm],
            "std": [math.sqrt(max(var - dv, 0.0)) - slack, math.sqrt(var + dv) + slack]}


def freq(n: int, probs: dict) -> dict:
    """Bounds on each value's sample frequency."""
    return {str(k): [p - Z * math.sqrt(p * (1 - p) / n), p + Z * math.sqrt(p * (1 - p) / n)]
            for k, p in probs.items()}


def zeros(dtype=np.float32):
    return {"x": np.zeros((1,), dtype)}


def cases() -> list[Case]:
    out: list[Case] = []
    shape = (64, 64)
    n = shape[0] * shape[1]
    S = np.array(shape, np.int32)

    def uni(low, high, dtype="f32", slack=0.0):
        w = high - low
        return {"shape": list(shape), "dtype": dtype, "min": low, "max": high,
                **moments(n, (low + high) / 2, w * w / 12, w ** 4 / 80, slack)}
    out.append(Case(FAM, "random_uniform", "random_uniform_range_seed", zeros(),
                    lambda x: mb.add(x=x, y=mb.random_uniform(shape=S, low=-2.0, high=3.0, seed=7)), {},
                    check="distribution", stats={"y": uni(-2.0, 3.0)}))
    out.append(Case(FAM, "random_uniform", "random_uniform_defaults", zeros(),
                    lambda x: mb.add(x=x, y=mb.random_uniform(shape=S)), {},
                    check="distribution", stats={"y": uni(0.0, 1.0)}, note="seed -1: a fixed seed here"))
    out.append(Case(FAM, "random_uniform", "random_uniform_fp16", zeros(np.float16),
                    lambda x: mb.add(x=x, y=mb.random_uniform(shape=S, low=np.float16(1), high=np.float16(2),
                                                              seed=11)), {},
                    opset="iOS16", precision="fp16", check="distribution",
                    stats={"y": uni(1.0, 2.0, "f16", slack=1e-3)}))

    def normal(mean, std, dtype="f32", slack=0.0, shp=shape):
        m = int(np.prod(shp))
        return {"shape": list(shp), "dtype": dtype, **moments(m, mean, std * std, 3 * std ** 4, slack)}
    out.append(Case(FAM, "random_normal", "random_normal_mean_std_seed", zeros(),
                    lambda x: mb.add(x=x, y=mb.random_normal(shape=S, mean=1.5, stddev=0.5, seed=3)), {},
                    check="distribution", stats={"y": normal(1.5, 0.5)}))
    out.append(Case(FAM, "random_normal", "random_normal_defaults", zeros(),
                    lambda x: mb.add(x=x, y=mb.random_normal(shape=S)), {},
                    check="distribution", stats={"y": normal(0.0, 1.0)}))
    out.append(Case(FAM, "random_normal", "random_normal_runtime_shape", {"shape": np.array([50, 40], np.int32)},
                    lambda shape: mb.random_normal(shape=shape, mean=-1.0, stddev=2.0, seed=5), {},
                    check="distribution", stats={"y": normal(-1.0, 2.0, shp=(50, 40))},
                    note="`shape` is the program's input"))

    def bern(p, dtype="f32"):
        # The std of 0/1 samples is a function of their mean: the mean and frequency bounds cover it.
        m = moments(n, p, p * (1 - p), 0.0)
        return {"shape": list(shape), "dtype": dtype, "values": [0.0, 1.0], "mean": m["mean"],
                "freq": freq(n, {1: p})}
    out.append(Case(FAM, "random_bernoulli", "random_bernoulli_prob_seed", zeros(),
                    lambda x: mb.add(x=x, y=mb.random_bernoulli(shape=S, prob=0.3, seed=9)), {},
                    check="distribution", stats={"y": bern(0.3)}))
    out.append(Case(FAM, "random_bernoulli", "random_bernoulli_defaults", zeros(),
                    lambda x: mb.add(x=x, y=mb.random_bernoulli(shape=S)), {},
                    check="distribution", stats={"y": bern(0.5)}))

    out.append(Case(FAM, "random_normal", "random_normal_fp16", zeros(np.float16),
                    lambda x: mb.add(x=x, y=mb.random_normal(shape=S, mean=np.float16(2), stddev=np.float16(0.5),
                                                             seed=21)), {},
                    opset="iOS16", precision="fp16", check="distribution",
                    stats={"y": normal(2.0, 0.5, "f16", slack=2e-3)}))
    out.append(Case(FAM, "random_bernoulli", "random_bernoulli_fp16", zeros(np.float16),
                    lambda x: mb.add(x=x, y=mb.random_bernoulli(shape=S, prob=np.float16(0.75), seed=23)), {},
                    opset="iOS16", precision="fp16", check="distribution", stats={"y": bern(0.75, "f16")}))

    logits = np.array([[0.5, -1.0, 2.0, 0.0, 1.0]], np.float32)
    p = np.exp(logits[0].astype(np.float64) - logits.max())
    p /= p.sum()
    size = 4000
    out.append(Case(FAM, "random_categorical", "random_categorical_logits", {"x": logits},
                    lambda x: mb.random_categorical(x=x, size=size, seed=13), {},
                    check="distribution", stats={"y": {"shape": [1, size], "dtype": "f32",
                                                       "values": [float(k) for k in range(5)],
                                                       "freq": freq(size, dict(enumerate(p)))}},
                    note="samples are category indices stored as floats"))
    probs = np.array([[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]], np.float32)
    out.append(Case(FAM, "random_categorical", "random_categorical_probs_2rows", {"x": probs},
                    lambda x: mb.random_categorical(x=x, mode="probs", size=2000, seed=17), {},
                    check="distribution", stats={"y": {"shape": [2, 2000], "dtype": "f32",
                                                       "values": [0.0, 1.0, 2.0, 3.0],
                                                       "freq": freq(4000, dict(enumerate(probs[0].astype(float))))}},
                    note="mode probs; two identical rows, frequencies over both"))
    out.append(Case(FAM, "random_categorical", "random_categorical_size1_defaults", {"x": logits},
                    lambda x: mb.random_categorical(x=x), {},
                    check="distribution", stats={"y": {"shape": [1, 1], "dtype": "f32",
                                                       "values": [float(k) for k in range(5)]}}))
    l16 = logits.astype(np.float16)
    p16 = np.exp(f64(l16[0]) - f64(l16).max())
    p16 /= p16.sum()
    out.append(Case(FAM, "random_categorical", "random_categorical_fp16", {"x": l16},
                    lambda x: mb.random_categorical(x=x, size=size, seed=29), {},
                    opset="iOS16", precision="fp16", check="distribution",
                    stats={"y": {"shape": [1, size], "dtype": "f16", "values": [float(k) for k in range(5)],
                                 "freq": freq(size, dict(enumerate(p16)))}}))
    return out
