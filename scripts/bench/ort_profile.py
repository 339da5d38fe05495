"""ONNX Runtime's own per-node profile of one exported model: where its time goes, by op type.

    .venv/bin/python scripts/bench/ort_profile.py --model mobilenet_v2_fp32 [--iterations N] [--threads T]

The counterpart of `candle_bench --child <id> --per-op`: set side by side, the two tables say
which op types carry the interpreter's gap to ONNX Runtime. Same session options as
ort_bench.py (ORT_ENABLE_ALL, CPUExecutionProvider, `--threads` as intra_op_num_threads),
with `enable_profiling`; 3 warm-up runs, then N profiled runs. ORT's profile records each
node's kernel time ("Node" events, `dur` in µs, names ending in `_kernel_time`); after its
graph optimisations a node is often several ONNX ops fused (FusedConv = Conv + activation),
so the op types are ORT's, not the ONNX file's. Prints the total per op type (ms a run, share
of the nodes' time), the whole `run` time, and the slowest nodes.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

import onnxruntime as ort

import benchlib

WARMUP = 3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=benchlib.EXPORTS + benchlib.ZOO_IDS)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="intra_op_num_threads (default 1)")
    ap.add_argument("--top", type=int, default=15, help="how many of the slowest nodes to list")
    args = ap.parse_args()
    if args.iterations <= 0:
        ap.error(f"--iterations expects a positive integer, got {args.iterations}")
    if args.threads <= 0:
        ap.error(f"--threads expects a positive integer, got {args.threads}")
    path = benchlib.ONNX_DIR / (args.model.replace("/", "_") + ".onnx")
    if not path.is_file():
        raise SystemExit(f"expected an ONNX export at {path}, found none: run scripts/bench/export_onnx.py "
                         "(or zoo_onnx.py for zoo/ members)")
    feeds = benchlib.feeds(benchlib.model_dir(args.model))

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = args.threads
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feeds = benchlib.onnx_feeds(sess, feeds)
        for _ in range(WARMUP + args.iterations):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())

    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    runs = runs[WARMUP:]  # the warm-up's events are in the profile too
    if not runs:
        raise SystemExit(f"ORT's profile holds no model_run events for {args.model}: {len(events)} events")
    first = runs[0]["ts"]
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
             and e["ts"] >= first]
    by_type = collections.defaultdict(lambda: [0, 0.0])
    by_node = collections.defaultdict(lambda: [0, 0.0, ""])
    for e in nodes:
        op = e.get("args", {}).get("op_name", "?")
        by_type[op][0] += 1
        by_type[op][1] += e["dur"]
        n = by_node[e["name"].removesuffix("_kernel_time")]
        n[0] += 1
        n[1] += e["dur"]
        n[2] = op
    total = sum(v[1] for v in by_type.values())
    run_us = benchlib.median([e["dur"] for e in runs])
    k = len(runs)
    print(f"{args.model}: onnxruntime {ort.__version__}, {args.threads} thread(s), {k} profiled runs; "
          f"model_run median {run_us / 1e3:.3f} ms, nodes {total / k / 1e3:.3f} ms a run")
    print(f"{'op type':<28}{'nodes/run':>10}{'ms/run':>10}{'share':>8}")
    for op, (calls, us) in sorted(by_type.items(), key=lambda kv: -kv[1][1]):
        print(f"{op:<28}{calls / k:>10.1f}{us / k / 1e3:>10.3f}{100 * us / total:>7.1f}%")
    print(f"slowest {args.top} nodes:")
    for name, (calls, us, op) in sorted(by_node.items(), key=lambda kv: -kv[1][1])[: args.top]:
        print(f"  {name:<48}{op:<16}{us / calls / 1e3:>8.3f} ms{100 * us / total:>7.1f}%")


if __name__ == "__main__":
    main()
