"""Our CandleEngine against its peers, in one run: MobileNetV2 (batch 1, 224x224), MiniLM-L6
(seq 128), and three zoo networks (PP-LCNet: 5x5 depthwise convs with "same" pads; PP-OCRv4 det:
transposed convs and upsampling, 1x3x192x384; YOLOv8n, 1x3x320x320, a control no kernel was
tuned or profiled for) on the same fp32 weights, through

    candle-interpreter   candle_bench --child <id> (the Core ML package, interpreted)
    onnxruntime          ort_bench.py --model <id> (export_onnx.py's graph, or for zoo/<member>
                         the original ONNX file the member was converted from, zoo_onnx.py)
    candle-transformers  candle_bench --child minilm_l6_safetensors (MiniLM only: native BertModel)

Builds the release example once, exports the ONNX graphs if missing (export_onnx.py and
zoo_onnx.py verify them against the goldens / the zoo's expected outputs; the zoo members need
`make zoo`), then for each model runs R rounds; a round runs every engine once,
each in a fresh process, with the order rotated from round to round so that none always goes
first. Latencies of all rounds are pooled for p50/p95; "p50 vs ORT" is the median over rounds
of (engine p50 / ONNX Runtime p50 of the same round), which cancels most of the machine's
drift; peak RSS is the median over rounds (max in the raw JSON), each the process's VmHWM
minus its RSS at start (see ort_bench.py and candle_bench.rs for the exact baselines). A second table
gives the framework's own cost: in each candle_bench child, `CandleEngine::infer` alternates with the
plan run directly on the calling thread, and the median per-pair difference is reported.

    .venv/bin/python scripts/bench/peers.py [--rounds 5] [--iterations 20] [--model mobilenet_v2 ...]

Prints a markdown table on stdout, progress on stderr, and writes every child's JSON line to
target/bench/peers-<UTC time>.json. Linux only. Target (issue #7): the interpreter at most 1.5x
ONNX Runtime's p50.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import benchlib

TARGET_RATIO = 1.5
HERE = Path(__file__).resolve().parent
MODELS = {
    "mobilenet_v2": {"label": "MobileNetV2 (1×3×224×224)", "fp32": "mobilenet_v2_fp32", "native": None},
    "minilm_l6": {"label": "MiniLM-L6 (seq 128)", "fp32": "minilm_l6_fp32", "native": "minilm_l6_safetensors"},
    # Zoo members on their original ONNX files (zoo_onnx.py): other shapes of network.
    "pplcnet": {"label": "PP-LCNet orientation (1×3×224×224; 5×5 depthwise, same pads)",
                "fp32": "zoo/pplcnet_orientation", "native": None},
    "ppocr_det": {"label": "PP-OCRv4 det (1×3×192×384; conv_transpose, upsampling)",
                  "fp32": "zoo/ppocr_v4_det", "native": None},
    # A control nobody profiled or tuned for: regular 3x3 convs, SiLU, concat, upsampling.
    "yolov8n": {"label": "YOLOv8n NudeNet (1×3×320×320; never profiled)",
                "fp32": "zoo/yolov8n_nudenet", "native": None},
}


def build_candle_bench() -> Path:
    """cargo build --release --example candle_bench; the executable's path from cargo's JSON."""
    benchlib.log("[peers] cargo build --release --example candle_bench")
    cmd = ["cargo", "build", "--release", "--example", "candle_bench", "--message-format=json-render-diagnostics"]
    proc = subprocess.run(cmd, cwd=benchlib.REPO_ROOT, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited with {proc.returncode}, expected 0")
    for line in proc.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "candle_bench" and msg.get("executable"):
            return Path(msg["executable"])
    raise SystemExit("cargo build finished but reported no candle_bench executable")


def run_child(cmd: list[str], what: str) -> dict:
    t = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{what}: {' '.join(map(str, cmd))} exited with {proc.returncode}, expected 0; stdout: {proc.stdout}")
    lines = proc.stdout.strip().splitlines()
    try:
        row = json.loads(lines[-1])
    except (IndexError, ValueError) as e:
        raise SystemExit(f"{what}: expected one JSON line on stdout, got {proc.stdout!r} ({e})")
    row["wall_s"] = time.perf_counter() - t
    return row


def engines_for(key: str, exe: Path, iterations: int, before: Path | None = None) -> list[tuple[str, list[str]]]:
    m = MODELS[key]
    it = ["--iterations", str(iterations), "--json"]
    out = [
        ("candle-interpreter", [str(exe), "--child", m["fp32"], *it]),
        ("onnxruntime", [sys.executable, str(HERE / "ort_bench.py"), "--model", m["fp32"], *it]),
    ]
    if before:
        out.append(("interpreter-before", [str(before), "--child", m["fp32"], *it]))
    if m["native"]:
        out.append(("candle-transformers", [str(exe), "--child", m["native"], *it]))
    return out


def machine() -> dict:
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor())
    return {"cpu": model, "cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}


def summarize(key: str, rounds: list[dict]) -> list[dict]:
    """rounds: [{engine: row}] -> one summary per engine (interpreter, native, ONNX Runtime)."""
    names = list(rounds[0])
    names.sort(key=lambda n: {"candle-interpreter": 0, "interpreter-before": 1, "candle-transformers": 2, "onnxruntime": 3}[n])
    out = []
    for n in names:
        rows = [r[n] for r in rounds]
        pooled = [x for r in rows for x in r["latencies_ms"]]
        ratios = [r[n]["p50_ms"] / r["onnxruntime"]["p50_ms"] for r in rounds]
        rss = [r["peak_rss_mb"] for r in rows]
        ort_rss = benchlib.median([r["onnxruntime"]["peak_rss_mb"] for r in rounds])
        out.append({
            "model": key,
            "engine": n,
            "runs": len(pooled),
            "p50_ms": benchlib.pct(pooled, 0.5),
            "p95_ms": benchlib.pct(pooled, 0.95),
            "round_p50_ms": [r["p50_ms"] for r in rows],
            "peak_rss_mb": benchlib.median(rss),
            "peak_rss_max_mb": max(rss),
            "p50_vs_ort": benchlib.median(ratios),
            "p50_vs_ort_rounds": ratios,
            "rss_vs_ort": benchlib.median(rss) / ort_rss,
            "prepare_ms": benchlib.median([r["prepare_ms"] for r in rows]),
            "threads": sorted({r["threads"] for r in rows}),
            # candle_bench's interleaved CandleEngine::infer vs the plan run directly (None for other engines).
            "overhead_ms": benchlib.median([r["overhead"]["median_delta_ms"] for r in rows])
            if all(r.get("overhead") for r in rows) else None,
            "overhead_percent_rounds": [r["overhead"]["percent"] for r in rows]
            if all(r.get("overhead") for r in rows) else None,
        })
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=20, help="timed runs per child process")
    ap.add_argument("--model", action="append", choices=sorted(MODELS), help="repeatable; default: all")
    ap.add_argument("--candle-bench", help="use this candle_bench executable instead of building it")
    ap.add_argument("--threads", type=int, help="threads for every engine: RAYON_NUM_THREADS for candle_bench, "
                                                 "intra_op_num_threads for ONNX Runtime (default: each one's own)")
    ap.add_argument("--before", help="an older candle_bench executable, run in the same rounds as `interpreter-before` "
                                     "(before/after figures from one interleaved run)")
    args = ap.parse_args()
    if args.rounds <= 0 or args.iterations <= 0:
        ap.error(f"--rounds and --iterations expect positive integers, got {args.rounds} and {args.iterations}")
    keys = args.model or list(MODELS)
    if args.threads is not None:
        if args.threads <= 0:
            ap.error(f"--threads expects a positive integer, got {args.threads}")
        os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # inherited by the candle_bench children
        os.environ["ORT_BENCH_THREADS"] = str(args.threads)  # read by ort_bench.py

    exe = Path(args.candle_bench) if args.candle_bench else build_candle_bench()
    ours = [MODELS[k]["fp32"] for k in keys if not MODELS[k]["fp32"].startswith("zoo/")]
    zoo = [MODELS[k]["fp32"] for k in keys if MODELS[k]["fp32"].startswith("zoo/")]
    if ours:
        subprocess.run([sys.executable, str(HERE / "export_onnx.py")] + [a for m in ours for a in ("--model", m)], check=True)
    if zoo:
        subprocess.run([sys.executable, str(HERE / "zoo_onnx.py")] + [a for m in zoo for a in ("--member", m)], check=True)

    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    raw, summaries = {}, []
    for key in keys:
        engines = engines_for(key, exe, args.iterations, Path(args.before) if args.before else None)
        rounds = []
        for r in range(args.rounds):
            order = engines[r % len(engines):] + engines[: r % len(engines)]
            res = {}
            for name, cmd in order:
                row = run_child(cmd, f"{key} {name}")
                res[name] = row
                benchlib.log(f"[peers] {key} round {r + 1}/{args.rounds} {name:<19}: p50 {row['p50_ms']:8.2f} ms, "
                             f"peak RSS {row['peak_rss_mb']:6.1f} MB, {row['threads']} threads ({row['wall_s']:.1f} s)")
            rounds.append(res)
        raw[key] = rounds
        summaries += summarize(key, rounds)
    load_after = os.getloadavg()

    any_ort = raw[keys[0]][0]["onnxruntime"]
    info = {
        "date_utc": started.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "load_average_1_5_15_before": load_before,
        "load_average_1_5_15_after": load_after,
        "rounds": args.rounds,
        "iterations": args.iterations,
        "onnxruntime": {k: any_ort[k] for k in ("ort_version", "graph_optimization_level", "execution_mode",
                                                 "intra_op_num_threads", "inter_op_num_threads", "providers")},
    }
    out_dir = benchlib.REPO_ROOT / "target" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_path = out_dir / f"peers-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    raw_path.write_text(json.dumps({"info": info, "summary": summaries, "rounds": raw}, indent=1) + "\n")

    m = info["machine"]
    print(f"## Against ONNX Runtime: one run, {info['date_utc']} UTC\n")
    print(f"{m['cpu']}, {m['cpus']} CPUs, Linux {m['kernel']}; {args.rounds} rounds × {args.iterations} timed runs per "
          f"engine (3 warm-up runs each), every engine in a fresh process per round, order rotated per round. "
          f"ONNX Runtime {any_ort['ort_version']} (PyPI, CPUExecutionProvider, {any_ort['graph_optimization_level']}, "
          f"intra_op_num_threads {any_ort['intra_op_num_threads']} = default). Load average before / after: "
          f"{load_before[0]:.2f} / {load_after[0]:.2f}.\n")
    print("| model | engine | p50 ms | p95 ms | peak RSS MB | p50 vs ORT | RSS vs ORT | prepare ms | threads |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in summaries:
        print(f"| {MODELS[s['model']]['label']} | {s['engine']} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f} | "
              f"{s['peak_rss_mb']:.1f} | {s['p50_vs_ort']:.2f}× | {s['rss_vs_ort']:.2f}× | {s['prepare_ms']:.1f} | "
              f"{'/'.join(map(str, s['threads']))} |")
    print()
    for s in summaries:
        if s["engine"] != "candle-interpreter":
            continue
        lo, hi = min(s["p50_vs_ort_rounds"]), max(s["p50_vs_ort_rounds"])
        verdict = "within" if s["p50_vs_ort"] <= TARGET_RATIO else "NOT within"
        print(f"- {MODELS[s['model']]['label']}: the interpreter's p50 is {s['p50_vs_ort']:.2f}× ONNX Runtime's "
              f"(per-round ratios {lo:.2f}–{hi:.2f}×): {verdict} the ≤ {TARGET_RATIO}× target.")
    print("\nFramework overhead: `CandleEngine::infer` (schema check, input conversion, the hop to the deadline "
          "worker) minus the plan run directly, alternated in one process; the median per-pair difference, "
          "as a share of the direct p50 per round (target: under 1%).\n")
    print("| model | engine | median Δ ms | Δ / p50 per round |")
    print("|---|---|---|---|")
    for s in summaries:
        if s["overhead_ms"] is not None:
            rounds = ", ".join(f"{p:.2f}%" for p in s["overhead_percent_rounds"])
            print(f"| {MODELS[s['model']]['label']} | {s['engine']} | {s['overhead_ms']:.3f} | {rounds} |")
    benchlib.log(f"[peers] raw results: {raw_path}")


if __name__ == "__main__":
    main()
