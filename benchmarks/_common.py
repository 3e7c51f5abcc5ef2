"""Helpers shared by the benchmarks: machine description, isolated measurements, tables.

Every measurement runs in a fresh subprocess, so that its peak memory (the growth of the
process's peak resident set over what it held just before the measured call) is its own and not
the high-water mark of an earlier one.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")
    except OSError:
        pass
    import numba
    import torch

    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numba": numba.__version__,
        "numba_threads": numba.get_num_threads(),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        kib = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))
    return kib / 1024


def measure(fn, repeats: int, warmup=None) -> dict:
    """Time ``fn``: one untimed first call, then ``repeats`` timed calls (min and median).

    ``warmup`` (the same work on a tiny input) runs before: it compiles or loads numba code and
    starts thread pools, and its time is reported as ``warmup_s``. Then the peak-RSS counter is
    reset, so ``peak_mib`` is the peak growth of resident memory over the calls on the real
    input, above what the process held before them (inputs included in that base).
    """
    t0 = time.perf_counter()
    if warmup is not None:
        warmup()
    warm = time.perf_counter() - t0
    before = rss_mib()
    exact = reset_peak_rss()
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    times.sort()
    cpu.sort()
    return {
        "warmup_s": warm,
        "first_s": first,
        "times_s": times,
        "min_s": times[0] if times else first,
        "median_s": times[len(times) // 2] if times else first,
        "cpu_min_s": cpu[0] if cpu else None,  # CPU time of all threads: less sensitive to load
        "peak_mib": max(0.0, peak_rss_mib() - before),
        "peak_exact": exact,  # False: the counter could not be reset (peak may include warm-up)
    }


# torch ships its own libgomp and numba's OpenMP layer loads the system one: two thread pools
# whose threads spin-wait after every parallel region. On 2 cores each then steals the other's
# CPU (measured: the scan 2-3x slower, a 1k-frame encoder pass up to 10x). Passive waiting
# avoids it; the benchmarks run every method with it unless --omp-wait-policy says otherwise.
OMP_WAIT_POLICY = "PASSIVE"


def run_worker(script: str, args: list[str], timeout: float, env: dict | None = None) -> dict:
    """Run ``script --worker args`` in a fresh interpreter; its last stdout line is JSON."""
    cmd = [sys.executable, script, "--worker", *args]
    env = {**({"OMP_WAIT_POLICY": OMP_WAIT_POLICY} if OMP_WAIT_POLICY else {}), **(env or {})}
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **env})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [""]
        return {"error": f"exit {p.returncode}: {tail[0][:200]}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def fmt(x, unit="", digits=3) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return f"{x:.{digits}g}{unit}"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
