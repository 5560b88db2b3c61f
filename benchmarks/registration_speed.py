#!/usr/bin/env python3
"""Speed of a registered run of the full patient4 twin, against a bare run measured in the same process.

Three ``run_study`` runs of the same study, interleaved and repeated (``--repeat``, best of):

- **bare**: ``RunOptions()`` (each time point's own VOIs, no registration) — the baseline;
- **rigid**: ``registration="rigid", vois="reference-only"`` (CT–CT rigid + per-VOI SPECT refinement,
  reference VOIs propagated);
- **deformable**: ``registration="deformable", vois="reference-only"`` (adds the demons field).

Printed per run: wall seconds, the registration's own seconds (sum of ``Registration.metrics["seconds"]``
over the registered time points; the mask propagation is not included), the ratio to the bare run and
the excess over it. Issue #15's targets (2 cores): rigid run < 20 s, deformable < 40 s (≈ 60 s and
71 s before). Timings on a shared machine are noisy: the load average is printed before and after, and
the ratio to the bare run measured alongside is the number to compare between machines.

Usage: python benchmarks/registration_speed.py [--twin DIR] [--repeat N] [--runs bare,rigid,deformable]
(without ``--twin`` the full 4.80 mm patient4 twin is written to a temporary folder first, about 1 min).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from LuDosimetryLib.phantom import write_twin  # noqa: E402
from LuDosimetryLib.pipeline import RunOptions, run_study  # noqa: E402

RUNS = {
    "bare": dict(),
    "rigid": dict(registration="rigid", vois="reference-only"),
    "deformable": dict(registration="deformable", vois="reference-only"),
}
TARGET_S = {"rigid": 20.0, "deformable": 40.0}


def timed_run(root: Path, kind: str):
    """(wall seconds, registration seconds summed over time points) of one ``run_study``."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_study(root, RunOptions(**RUNS[kind]))
    wall = time.perf_counter() - t0
    reg_s = sum(float(r.metrics.get("seconds", 0.0)) for r in res.registrations.values())
    return wall, reg_s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--twin", default=None, help="patient folder of a full twin already written")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--runs", default="bare,rigid,deformable")
    args = ap.parse_args(argv)
    kinds = [k for k in args.runs.split(",") if k]
    unknown = sorted(set(kinds) - set(RUNS))
    if unknown or "bare" not in kinds:
        raise SystemExit(f"--runs takes {', '.join(RUNS)} and must include bare (got {args.runs})")
    if args.twin:
        root = Path(args.twin)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            root = write_twin(Path(tempfile.mkdtemp(prefix="twin_regspeed_")), preset="patient4", seed=0,
                              fast=False, projections=False)
    load0 = os.getloadavg()
    print(f"study {root}; {os.cpu_count()} CPUs; load average before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    walls = {k: [] for k in kinds}
    regs = {k: [] for k in kinds}
    for rep in range(args.repeat):
        for kind in kinds:
            wall, reg_s = timed_run(root, kind)
            walls[kind].append(wall)
            regs[kind].append(reg_s)
            print(f"  repeat {rep + 1} {kind:10s} {wall:7.1f} s (registration {reg_s:5.1f} s; load "
                  f"{os.getloadavg()[0]:.2f})", flush=True)
    load1 = os.getloadavg()
    print(f"load average after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    bare = min(walls["bare"])
    print(f"\n{'run':10s} {'best s':>7s} {'registration s':>14s} {'ratio to bare':>13s} {'excess s':>8s} "
          f"{'target s':>8s}")
    for kind in kinds:
        best = min(walls[kind])
        target = f"{TARGET_S[kind]:8.0f}" if kind in TARGET_S else f"{'':8s}"
        print(f"{kind:10s} {best:7.1f} {min(regs[kind]):14.1f} {best / bare:13.2f} {best - bare:8.1f} {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
