"""What the benchmarks share: the machine and the load beside each table, saving, and child runs."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch


def machine(load_before: tuple[float, float, float]) -> dict:
    """The machine, torch and the load averages before (given) and now."""
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }


def report(results: dict, table: str, out: Path) -> dict:
    """Print ``table`` and the load averages in ``results["machine"]``, save ``results`` as JSON
    at ``out``."""
    load = results["machine"]
    print(table)
    print(
        f"load average before {load['loadavg_before'][0]:.2f}, after {load['loadavg_after'][0]:.2f}"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"saved {out}")
    return results


def run_child(code: str, args: list[str], what: str) -> dict:
    """Run ``python -c code *args`` in a fresh process; its last stdout line parsed as JSON (else
    exit with its stderr)."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], check=False, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"benchmark run {what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
