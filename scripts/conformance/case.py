"""The conformance suite's unit: one small ML Program exercising one op with one set of options,
its inputs, and the output an independent reference computes (float64 numpy, or coremltools'
own `value_inference`) -- never our engine's output.

Each family file `cases_<family>.py` in this folder defines `cases() -> list[Case]`, with the
family named as coremltools names its definition file (`ops/defs/iOSxx/<family>.py`).
`build.py` writes every case to tests/fixtures/conformance/<family>/<name>/:

    model.mlpackage/   the program (mb.program at the case's opset, then ct.convert)
    inputs/<in>.npy    the program's inputs, in their declared dtypes
    expected/<out>.npy the reference output, float64 for floats (bools as uint8 0/1)
    states/<s>.npy     stateful cases: each state's value before the run, in its declared dtype
    expected_states/<s>.npy  stateful cases: each state's value after the run (float64 for floats)
    case.json          {"op", "family", "name", "opset", "precision", "rtol", "note"}, and for
                       distribution cases {"check": "distribution", "stats": {out: {...}}}

`tests/conformance.rs` runs every case through the interpreter and compares; a case with
`states/` runs with that state map (`Plan::run_with_state`) and its final states are compared
with `expected_states/` under the same budget as the outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

OPSETS = ("iOS15", "iOS16", "iOS17", "iOS18")


@dataclass
class Case:
    family: str
    """coremltools' defs file of the op: activation, elementwise_unary, tensor_transformation..."""
    op: str
    """The MIL op type under test."""
    name: str
    """Unique within the family: op, option and precision, e.g. `elu_alpha2_fp16`."""
    inputs: dict[str, np.ndarray]
    """Program inputs by name; dtype float32 / float16 / int32 / bool declares the input's type."""
    build: Callable[..., object]
    """Body of the program: called with one MIL var per input (as keyword arguments, in `inputs`
    order), returns the output var or a tuple of them, in `expected` order."""
    expected: dict[str, np.ndarray]
    """Reference outputs by output name (build.py names the program's outputs with these keys)."""
    opset: str = "iOS15"
    """Minimum deployment target of the program: the op's re-versioned form is chosen by it."""
    precision: str = "fp32"
    """fp32, or fp16 (inputs and compute in fp16; the budget is the plan's fp16 one)."""
    rtol: float | None = None
    """Budget override: L-infinity error relative to the reference's scale (max |ref|, at least 1)."""
    note: str = ""
    """Edge case covered, or why the reference is what it is."""
    tags: list[str] = field(default_factory=list)
    classifier: list | None = None
    """Class labels: the program is converted as a classifier (`ct.ClassifierConfig`), which ends it
    with a `classify` op over the program's single output; `expected` then names classify's
    outputs (`classLabel`, `classLabel_probs`: the probabilities in `classifier` order)."""
    check: str = "values"
    """`values`: outputs compared with `expected`. `distribution` (random ops, whose values cannot
    match Apple's generator): `expected` is empty and each output is checked against `stats`."""
    states: dict[str, np.ndarray] = field(default_factory=dict)
    """Stateful programs (iOS18): each state's initial value by name; its dtype (float32 / float16
    / int32) declares the state's type (`mb.StateTensorSpec`). `build` gets one state var per
    state as a keyword argument too (after the inputs), to use with `mb.read_state` and
    `mb.coreml_update_state`."""
    expected_states: dict[str, np.ndarray] = field(default_factory=dict)
    """Reference value of every state after one run (required when `states` is set)."""
    stats: dict[str, dict] = field(default_factory=dict)
    """For `distribution` cases, per output: `shape` (exact), `dtype` (the output's, `f32`/`f16`),
    and any of `min`/`max` (bounds on every value), `values` (the allowed set), `mean` and `std`
    ([lo, hi] bounds computed from the op's parameters and the sample count), `freq` ({value:
    [lo, hi]} bounds on the fraction of samples equal to value). Written to case.json; the
    harness also checks that two plan builds give identical samples (the seed is honoured)."""
