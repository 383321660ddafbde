"""Runs every CKT benchmark, prints a table, and writes the results as JSON.

    python benchmarks/run_all.py [--quick] [--device cpu|cuda] --json PATH

`--quick`: reduced sizes (a few minutes on 2 CPU cores); `--tiny`: toy sizes, seconds (a smoke test of this code,
numbers not meaningful); default: the device's full sizes (see `benchmarks/sizes.py`). `--only` runs a subset.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `peft_ckt` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bench_bank, bench_context_reuse, bench_early_exit, bench_lora, bench_params, bench_scaling
from benchmarks.harness import clock_name
from benchmarks.result import BenchmarkResult
from benchmarks.sizes import profile_for

BENCHMARKS = {
    "params": bench_params.run,
    "sparse_vs_dense": bench_bank.run,
    "early_exit": bench_early_exit.run,
    "context_reuse": bench_context_reuse.run,
    "ckt_vs_lora": bench_lora.run,
    "scaling": bench_scaling.run,
}

REQUIRED_KEYS = (
    "sparse_vs_dense_time_ratio",
    "early_exit_time_ratio",
    "context_reuse_overhead",
    "ckt_vs_lora_step_time_ratio",
    "ckt_vs_lora_peak_memory_ratio",
    "paper_trainable_params",
    "paper_trainable_percent",
    "scaling",
)


def machine_description(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "clock": clock_name(device),
    }
    if hasattr(os, "getloadavg"):  # other work on a shared machine inflates (and adds noise to) the timings
        info["load_average_at_start"] = os.getloadavg()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu_model"] = names[0]
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    for package in ("diffusers", "peft", "transformers"):
        try:
            info[package] = __import__(package).__version__
        except ImportError:
            pass
    return info


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    from peft_ckt.atomic import write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(_json_safe(payload), indent=2) + "\n")


def format_table(results: list[BenchmarkResult]) -> str:
    lines = [f"{'benchmark':<52} {'measured':>12}  {'target':<34} ok", "-" * 104]
    for result in results:
        lines.append(f"[{result.name}] ({result.seconds:.1f} s)")
        for row in result.rows:
            value = f"{row.measured:.4g}{(' ' + row.unit) if row.unit else ''}"
            ok = "" if row.ok is None else ("yes" if row.ok else "NO")
            lines.append(f"  {row.name:<50} {value:>12}  {row.target or '':<34} {ok}")
    return "\n".join(lines)


def run(
    device: torch.device, quick: bool = False, tiny: bool = False, only: Optional[list[str]] = None
) -> dict[str, Any]:
    sizes = profile_for(device, quick=quick, tiny=tiny)
    names = only or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise ValueError(f"Unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}.")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    machine = machine_description(device)
    results: list[BenchmarkResult] = []
    payload: dict[str, Any] = {}
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        tqdm = None
    progress = tqdm(names, desc="benchmarks", file=sys.stderr) if tqdm is not None else names
    for name in progress:
        if tqdm is not None:
            progress.set_postfix_str(name)
        start = time.perf_counter()
        result = BENCHMARKS[name](sizes, device)
        result.seconds = time.perf_counter() - start
        results.append(result)
        payload.update(result.metrics)
    payload["machine"] = machine
    if hasattr(os, "getloadavg"):
        machine["load_average_at_end"] = os.getloadavg()
    payload["sizes"] = sizes.as_dict()
    payload["rows"] = {result.name: [row.as_dict() for row in result.rows] for result in results}
    payload["details"] = {result.name: result.details for result in results}
    payload["seconds"] = {result.name: result.seconds for result in results}
    payload["table"] = format_table(results)
    return payload


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Run the CKT benchmarks and write JSON.")
    parser.add_argument("--quick", action="store_true", help="reduced sizes (a few minutes on 2 CPU cores)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes for a smoke test (seconds)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    parser.add_argument("--only", nargs="+", default=None, help=f"a subset of {list(BENCHMARKS)}")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default on CPU: 1)")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for, but torch sees no CUDA device.")
    threads = torch.get_num_threads()
    # One CPU thread by default: on a shared machine a second thread often waits at every parallel region for a
    # core that another process holds (measured: 1 thread 4x faster than 2 under load, and far steadier).
    torch.set_num_threads(args.threads or (1 if device.type == "cpu" else threads))
    try:
        payload = run(device, quick=args.quick, tiny=args.tiny, only=args.only)
    finally:
        torch.set_num_threads(threads)
    print(payload["table"])
    if args.json is not None:
        write_json_atomic(args.json, payload)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
