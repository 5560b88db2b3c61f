#!/usr/bin/env python3
"""Speed and memory of each step, with bare baselines measured in the same run.

1. DVK dose on a 256×256×200 grid: ``dose_dvk`` vs a bare ``scipy.signal.fftconvolve(..., mode='same')``
   of the same float32 arrays and kernel (target: within 2× of it).
2. The whole ``run_study`` on the synthetic patient (target: < 60 s on 2 cores), split into its steps
   by the progress messages, with the peak of memory traced by ``tracemalloc`` (numpy arrays included)
   and the process's maximum resident set size.

Usage: python benchmarks/speed.py [--fast] [--repeat N]
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import scipy
import scipy.signal


def best_of(fn, repeat: int):
    times = []
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def bench_dvk(repeat: int) -> None:
    from LuDosimetryLib.dose import dose_dvk, dose_voxel_kernel
    from LuDosimetryLib.radionuclides import radionuclide

    lu = radionuclide("Lu-177")
    spacing = (4.7952, 4.7952, 4.7952)
    t0 = time.perf_counter()
    kernel = dose_voxel_kernel(spacing, lu)
    t_kernel = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    tia = rng.gamma(2.0, 1e9, size=(200, 256, 256)).astype(np.float32)  # Bq·s per voxel
    k32 = kernel.astype(np.float32)
    t_base, ref = best_of(lambda: scipy.signal.fftconvolve(tia, k32, mode="same"), repeat)
    t_ours, ours = best_of(lambda: dose_dvk(tia, spacing, kernel=kernel, nuclide=lu), repeat)
    rel = float(np.max(np.abs(np.asarray(ours, np.float64) - ref.astype(np.float64))) / np.max(np.abs(ref)))
    print("## DVK convolution, grid 256×256×200, kernel", "×".join(map(str, kernel.shape)))
    print(f"kernel build            {t_kernel:8.3f} s (first call, cached afterwards)")
    print(f"scipy.signal.fftconvolve {t_base:8.3f} s  (bare baseline, float32, mode='same')")
    print(f"dose_dvk                {t_ours:8.3f} s  ratio {t_ours / t_base:5.2f}× the baseline (target ≤ 2×)")
    print(f"max |difference| / max  {rel:.2e}")


def bench_run(fast: bool) -> None:
    from LuDosimetryLib.phantom import write_synthetic_patient
    from LuDosimetryLib.pipeline import RunOptions, run_study, write_outputs

    base = Path(tempfile.mkdtemp(prefix="ludosimetry-speed-"))
    t0 = time.perf_counter()
    study = write_synthetic_patient(base / "study", seed=0, fast=fast)
    t_phantom = time.perf_counter() - t0
    def timed_run(trace: bool):
        marks = []

        def progress(fraction, message):
            key = " ".join(w for w in message.split()[:2] if not any(c.isdigit() for c in w))
            if not marks or marks[-1][1] != key:
                now = time.perf_counter()
                if trace:
                    _, peak = tracemalloc.get_traced_memory()
                    if marks:
                        marks[-1][3] = peak
                    tracemalloc.reset_peak()
                marks.append([now, key, message, 0])

        if trace:
            tracemalloc.start()
        t0 = time.perf_counter()
        res = run_study(study, RunOptions(dose_method="dvk"), progress=progress)
        t_run = time.perf_counter() - t0
        if trace:
            marks[-1][3] = tracemalloc.get_traced_memory()[1]
        t1 = time.perf_counter()
        write_outputs(res, base / ("out_traced" if trace else "out"))
        t_write = time.perf_counter() - t1
        if trace:
            tracemalloc.stop()
        return res, marks, t0, t_run, t_write

    # Timing without tracemalloc (it slows Python-heavy steps such as DICOM parsing several-fold),
    # then a second run only for the memory peaks.
    res, marks, t0, t_run, t_write = timed_run(False)
    _, traced, _, _, _ = timed_run(True)
    peaks = {m[1]: m[3] for m in traced}
    grid = "×".join(map(str, res.reference_spect.GetSize()))
    print(f"\n## run_study on the synthetic patient ({'fast' if fast else 'full'}; SPECT grid {grid}, "
          f"{len(res.time_points)} time points, {len(res.vois)} VOIs), {os.cpu_count()} CPUs")
    print(f"phantom generation       {t_phantom:8.2f} s (not part of the run)")
    print(f"{'step':<32}{'seconds':>9}{'traced peak MB':>16}")
    ends = [m[0] for m in marks[1:]] + [t0 + t_run]
    for (start, key, message, _), end in zip(marks, ends):
        print(f"{key[:32] or message[:32]:<32}{end - start:9.2f}{peaks.get(key, 0) / 1e6:16.1f}")
    print(f"{'write_outputs':<32}{t_write:9.2f}")
    print(f"TOTAL run_study + outputs {t_run + t_write:8.2f} s (target < 60 s)")
    print(f"max resident set size    {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:8.0f} MB")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    print(f"# LuDosimetry speed (numpy {np.__version__}, scipy {scipy.__version__}, python {sys.version.split()[0]})")
    bench_dvk(args.repeat)
    bench_run(args.fast)
    return 0


if __name__ == "__main__":
    sys.exit(main())
