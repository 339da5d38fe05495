"""ONNX Runtime (CPU, from PyPI) latency and peak RSS for one exported model, in this process.

    .venv/bin/python scripts/bench/ort_bench.py --model minilm_l6_fp32 [--iterations N] [--json]

Measures, like candle_bench --child: session creation (prepare), 3 warm-up runs, N timed
`InferenceSession.run` calls on the golden inputs (models/<id>/inputs/*.npy), p50/p95
(nearest rank), and peak RSS = VmHWM after the timed runs minus VmRSS taken right after
`import numpy, onnxruntime` (so the runtime's own import is not counted; candle_bench likewise
subtracts its process's RSS at start). Session options: ORT defaults for threading
(intra_op_num_threads 0 = one thread per physical core), sequential execution,
graph_optimization_level ORT_ENABLE_ALL, CPUExecutionProvider.

--json prints one line: {"id", "engine": "onnxruntime", "prepare_ms", "p50_ms", "p95_ms",
"peak_rss_mb", "start_rss_mb", "latencies_ms", "threads", ...}; "threads" is the calling thread
plus the worker threads that creating the session started (ORT's intra-op pool).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import benchlib

START_KB = benchlib.status_kb("VmRSS:")  # after importing numpy and onnxruntime
START_THREADS = len(os.listdir("/proc/self/task"))  # the caller and numpy's BLAS threads
WARMUP = 3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=benchlib.EXPORTS + benchlib.ZOO_IDS)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--onnx", help="the .onnx file (default target/onnx/<model>.onnx)")
    ap.add_argument("--json", action="store_true", help="print one JSON line instead of a summary")
    args = ap.parse_args()
    if args.iterations <= 0:
        ap.error(f"--iterations expects a positive integer, got {args.iterations}")
    default = benchlib.ONNX_DIR / (args.model.replace("/", "_") + ".onnx")  # zoo/<m> -> zoo_<m>.onnx
    path = Path(args.onnx) if args.onnx else default
    if not path.is_file():
        raise SystemExit(f"expected an ONNX export at {path}, found none: run scripts/bench/export_onnx.py")
    mdir = benchlib.model_dir(args.model)
    feeds = benchlib.feeds(mdir)

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # peers.py --threads N sets this (0 or unset: ORT's default, one thread per physical core).
    so.intra_op_num_threads = int(os.environ.get("ORT_BENCH_THREADS", "0"))
    t = time.perf_counter()
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    prepare_ms = (time.perf_counter() - t) * 1e3
    feeds = benchlib.onnx_feeds(sess, feeds)
    pool_threads = len(os.listdir("/proc/self/task")) - START_THREADS  # ORT's intra-op pool workers
    for _ in range(WARMUP):
        sess.run(None, feeds)
    lat = []
    for _ in range(args.iterations):
        t = time.perf_counter()
        sess.run(None, feeds)
        lat.append((time.perf_counter() - t) * 1e3)
    peak_kb = benchlib.status_kb("VmHWM:")
    row = {
        "id": args.model,
        "engine": "onnxruntime",
        "ort_version": ort.__version__,
        "providers": sess.get_providers(),
        "graph_optimization_level": str(so.graph_optimization_level).split(".")[-1],
        "execution_mode": str(so.execution_mode).split(".")[-1],
        "intra_op_num_threads": so.intra_op_num_threads,  # 0: ORT's default (physical cores)
        "inter_op_num_threads": so.inter_op_num_threads,
        # Threads running the graph: the caller plus the pool workers the session started.
        "threads": pool_threads + 1,
        "cpu_count": os.cpu_count(),
        "warmup": WARMUP,
        "iterations": args.iterations,
        "weights_mb": path.stat().st_size / (1024 * 1024),  # MiB, as the RSS fields
        "prepare_ms": prepare_ms,
        "p50_ms": benchlib.pct(lat, 0.5),
        "p95_ms": benchlib.pct(lat, 0.95),
        "peak_rss_mb": (peak_kb - START_KB) / 1024.0,
        "start_rss_mb": START_KB / 1024.0,
        "latencies_ms": lat,
    }
    if args.json:
        print(json.dumps(row))
    else:
        print(f"{args.model}: onnxruntime {row['ort_version']} ({row['threads']} threads, {row['graph_optimization_level']}): "
              f"prepare {prepare_ms:.1f} ms, p50 {row['p50_ms']:.2f} ms, p95 {row['p95_ms']:.2f} ms over "
              f"{args.iterations} runs, peak RSS {row['peak_rss_mb']:.1f} MB over {row['start_rss_mb']:.1f} MB at start")


if __name__ == "__main__":
    main()
