#!/usr/bin/env python3
"""Batch speed (issue #15): N patients on W workers against (N/W) × the single-run time, in ONE run.

The cohort: N copies of the fast synthetic patient (seed 0) with PatientIDs PAT1..PATN. Both sides are what a
user runs, as fresh processes, wall clock:

- single: ``ludosimetry run STUDY --out ... --quiet`` (its imports included, as a user's run has them);
- batch: ``ludosimetry batch COHORT --out ... --workers W --quiet`` (cluster start, planning, the runs, the
  cohort table, the population plots and the cohort report included), into a new output folder each time;
- W runs at once (W > 1): W ``ludosimetry run`` processes started together, no Dask: what the machine gives W
  concurrent runs (on a shared machine, less than W × one), the bare baseline of the batch on W workers.

Single runs and batches are interleaved and repeated (``--repeat``); the median of each is used. Printed per W:
the ratio batch / ((N/W) × single) (the issue's target: ≤ 1.15) and the granularity floor of that ratio,
ceil(N/W) / (N/W): whole runs on W single-threaded workers cannot finish before ceil(N/W) rounds (3 on 2
workers: 2 rounds, floor 1.33). The batch's time is split from its cohort_summary.json: before the cohort
(client imports, cluster start), the planning tasks, the runs (longest task, sum of tasks), after the runs
(tables, plots, report).

Usage: python benchmarks/batch_speed.py [--patients 3] [--workers 1 2] [--repeat 2]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cohort_of_copies(study: Path, root: Path, n: int) -> Path:
    """``root/pat<k>``: copies of ``study`` with PatientID PAT<k> (k = 1..n)."""
    import pydicom
    for k in range(1, n + 1):
        dst = root / f"pat{k}"
        shutil.copytree(str(study), str(dst))
        for f in dst.rglob("*.dcm"):
            ds = pydicom.dcmread(str(f))
            ds.PatientID = f"PAT{k}"
            ds.save_as(str(f))
    return root


def timed(*cmds) -> float:
    """Wall seconds of the commands run at the same time (each a fresh process) until the last one ends."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for cmd in cmds]
    for cmd, proc in zip(cmds, procs):
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}): {err.strip()[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    from LuDosimetryLib.phantom import write_synthetic_patient

    exe = shutil.which("ludosimetry") or sys.exit("the ludosimetry command is not installed (pip install -e .)")
    base = Path(tempfile.mkdtemp(prefix="ludosimetry-batch-speed-"))
    try:
        study = Path(write_synthetic_patient(base / "study", seed=0, fast=True))
        cohort = cohort_of_copies(study, base / "cohort", args.patients)
        single, batches, parts = [], {w: [] for w in args.workers}, {w: [] for w in args.workers}
        together = {w: [] for w in args.workers if w > 1}
        k = 0
        for _ in range(args.repeat):
            k += 1
            single.append(timed([exe, "run", str(cohort / "pat1"), "--out", str(base / f"single{k}"), "--quiet"]))
            for w in args.workers:
                k += 1
                if w > 1:  # the bare baseline of W workers: W single runs at once, no Dask
                    together[w].append(timed(*[[exe, "run", str(cohort / f"pat{1 + j % args.patients}"), "--out",
                                                str(base / f"together{k}_{j}"), "--quiet"] for j in range(w)]))
                out = base / f"batch{k}"
                batches[w].append(timed([exe, "batch", str(cohort), "--out", str(out), "--workers", str(w),
                                         "--quiet"]))
                summary = json.loads((out / "cohort_summary.json").read_text(encoding="utf-8"))
                assert summary["ran"] == args.patients, summary["failures"]
                parts[w].append(summary)
                shutil.rmtree(str(out))
            single.append(timed([exe, "run", str(cohort / "pat1"), "--out", str(base / f"single{k}b"), "--quiet"]))
        t_single = statistics.median(single)
        n = args.patients
        print(f"## batch speed: {n} synthetic patients (fast), {os.cpu_count()} CPUs, repeat {args.repeat}")
        print(f"single run (ludosimetry run, fresh process)   median {t_single:6.1f} s  "
              f"[{', '.join(f'{s:.1f}' for s in single)}]")
        for w in args.workers:
            t_batch = statistics.median(batches[w])
            ideal = n / w * t_single
            floor = math.ceil(n / w) / (n / w)
            print(f"batch of {n} on {w} worker(s)                   median {t_batch:6.1f} s  "
                  f"[{', '.join(f'{s:.1f}' for s in batches[w])}]")
            print(f"  ratio batch / ((N/W) x single) = {t_batch:.1f} / {ideal:.1f} = {t_batch / ideal:.2f} "
                  f"(target <= 1.15; granularity floor ceil(N/W)/(N/W) = {floor:.2f}; "
                  f"ratio / floor = {t_batch / ideal / floor:.2f})")
            if w in together:  # what the machine gives W processes at once (cores shared with other work)
                t_w = statistics.median(together[w])
                print(f"  {w} single runs at once (no Dask)             median {t_w:6.1f} s  "
                      f"[{', '.join(f'{s:.1f}' for s in together[w])}] = {t_w / t_single:.2f} x single")
                print(f"  ratio batch / ((N/W) x {w}-at-once) = {t_batch:.1f} / {n / w * t_w:.1f} = "
                      f"{t_batch / (n / w * t_w):.2f} (the batch against W runs at once on the same machine, "
                      f"without Dask)")
            for summary, wall in zip(parts[w], batches[w]):
                tasks = summary["tasks"]
                runs = [t["seconds"] for t in tasks]
                timing = summary.get("timing_s", {})
                print(f"  one batch: wall {wall:5.1f} s = before the cohort {wall - summary['seconds']:4.1f} s "
                      f"+ cohort {summary['seconds']:5.1f} s (planning {timing.get('planning', float('nan')):4.1f}, "
                      f"runs {timing.get('runs', float('nan')):5.1f}, after {timing.get('after', float('nan')):4.1f}); "
                      f"run tasks {', '.join(f'{s:.1f}' for s in runs)} s")
    finally:
        shutil.rmtree(str(base), ignore_errors=True)


if __name__ == "__main__":
    main()
