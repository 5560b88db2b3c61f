"""``ludosimetry``: the command line.

Subcommands: ``inspect`` (inventory of a study), ``run`` (the whole chain), ``batch`` (a cohort of runs on
Dask), ``population`` (population kinetics of a cohort, for ``run --reduced-method nlmm``), ``dvh`` (statistics of any RT Dose with an RTSTRUCT), ``report`` (rebuild a run's
report.html/report.pdf from its output folder), ``cohort-report`` (rebuild a batch's cohort_report.html/.pdf and
population plots), ``phantom`` (write the synthetic patient), ``demo`` (phantom + run).
A user error prints one line ``ludosimetry: error: <file>: <problem>`` and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import List, Optional

from . import __version__, options
from .errors import LuDosimetryError


class TerminalProgress:
    """A one-line progress bar on stderr (silent with ``quiet``)."""

    def __init__(self, quiet: bool = False, width: int = 30):
        # A bar only on a terminal: logs and captured output get the final table, not carriage returns.
        self.quiet = quiet or not (sys.stderr and sys.stderr.isatty())
        self.width = width
        self.t0 = time.monotonic()
        self._last = ""

    def __call__(self, fraction: float, message: str) -> None:
        if self.quiet:
            return
        n = int(round(fraction * self.width))
        line = f"\r[{'#' * n}{'.' * (self.width - n)}] {fraction * 100:5.1f}% {time.monotonic() - self.t0:6.1f}s {message[:50]:<50}"
        if line != self._last:
            sys.stderr.write(line)
            sys.stderr.flush()
            self._last = line

    def close(self) -> None:
        if not self.quiet and self._last:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _add_injection(p: argparse.ArgumentParser) -> None:
    """The injection options alone (``inspect``)."""
    for name in ("injected_activity_bq", "injection_time"):
        declared = options.option(name, "run")
        p.add_argument(declared.flag, dest=declared.name, metavar=declared.metavar,
                       help=declared.help + (f" ({declared.unit})" if declared.unit else ""))


def _injection_kwargs(args) -> dict:
    values = {name: options.option(name, "run").parse(getattr(args, name, None))
              for name in ("injected_activity_bq", "injection_time")}
    for name, value in values.items():
        options.option(name, "run").check(value)
    return values


def cmd_inspect(args) -> int:
    from .io.inventory import scan_study
    inv = scan_study(args.study, **_injection_kwargs(args))
    if args.json:
        print(json.dumps(inv.to_json(), indent=2))
        return 0
    print(f"Study: {inv.root}")
    act = f"{inv.injected_activity_bq / 1e6:.1f} MBq" if inv.injected_activity_bq else "unknown"
    when = inv.injection_time.isoformat(sep=" ") if inv.injection_time else "unknown"
    print(f"Injection: {act} at {when} ({inv.injection_source or 'not in headers'})")
    print(f"Time points: {len(inv.time_points)}")
    for tp in inv.time_points:
        h = inv.hours_post_injection(tp.acquisition_time)
        hs = f"{h:8.2f} h" if h is not None else "       ? h"
        print(f"  TP{tp.index + 1}  {tp.acquisition_time.isoformat(sep=' ')}  {hs}  {tp.code or ''}")
    print()
    print(f"{'TP':>3} {'role':<18} {'mod':<8} {'files':>5}  {'code':<9} {'description':<40} series UID")
    for s in sorted(inv.series, key=lambda s: (s.time_point if s.time_point is not None else 99, s.role)):
        tp = "-" if s.time_point is None else str(s.time_point + 1)
        role = s.role + (f"[{s.form}]" if s.form else "")
        print(f"{tp:>3} {role:<18} {s.modality:<8} {len(s.files):>5}  {s.code or '':<9} "
              f"{s.description[:40]:<40} {s.series_instance_uid}")
    if inv.skipped:
        print(f"\nSkipped {len(inv.skipped)} file(s):")
        for item in inv.skipped[:20]:
            print(f"  {item['file']}: {item['reason']}")
        if len(inv.skipped) > 20:
            print(f"  ... and {len(inv.skipped) - 20} more")
    for w in inv.warnings:
        print(f"warning: {w}")
    return 0


def _print_table(results) -> None:
    print(f"\nPatient {results.patient_id}: {results.injected_activity_bq / 1e9:.3f} GBq at "
          f"{results.injection_time.isoformat(sep=' ')}, dose method {results.dose_method.upper()}")
    print("  " + ", ".join(f"TP{t.index + 1} {t.hours_post_injection:.2f} h" for t in results.time_points))
    hdr = f"{'VOI':<18}{'vol mL':>9}{'mass g':>9}{'TIA MBq·h':>12}{'TIAC h':>8}{'model':>17}{'Teff h':>8}" \
          f"{'mean Gy':>9}{'u %':>6}{'D2':>7}{'D50':>7}{'D98':>7}{'Gy/GBq':>8}{'BED Gy':>8}"
    print(hdr)

    def cell(value, width: int, fmt: str) -> str:
        return f"{'-':>{width}}" if value is None or value != value else f"{value:{width}{fmt}}"

    for name, v in results.vois.items():
        print(f"{name[:17]:<18}{v.volume_ml:9.1f}{v.mass_g:9.1f}{v.tia_bq_s / 3.6e9:12.1f}{v.tiac_h:8.3f}"
              f"{v.fit_model:>17}{cell(v.effective_half_life_h, 8, '.1f')}{v.mean_dose_gy:9.3f}"
              f"{cell(v.mean_dose_uncertainty_pct, 6, '.1f')}{v.d2_gy:7.2f}{v.d50_gy:7.2f}{v.d98_gy:7.2f}"
              f"{v.gy_per_gbq:8.3f}{cell(v.bed_gy, 8, '.2f')}")
    for label, region in (("whole body", results.whole_body), ("remainder of body", results.remainder_of_body)):
        if region and region.get("tia_bq_s") is not None:  # #14: LuDosimetryLib.whole_body
            print(f"{label:<18}{'-':>9}{cell(region.get('mass_g'), 9, '.1f')}{region['tia_bq_s'] / 3.6e9:12.1f}"
                  f"{cell(region.get('tiac_h'), 8, '.3f')}{str(region.get('fit_model', '-')):>17}"
                  f"{cell(region.get('effective_half_life_h'), 8, '.1f')}{cell(region.get('mean_dose_gy'), 9, '.3f')}"
                  f"{cell(region.get('tia_uncertainty_pct'), 6, '.1f')}  ({region['method']})")
    print("(u: relative standard uncertainty of the mean dose, k = 1; BED: '-' where the tissue has no alpha/beta)")
    hybrid = [(n, v) for n, v in results.vois.items() if v.hybrid_tia_bq_s]
    if hybrid:
        print(f"\nHybrid planar/SPECT (amplitude from TP{results.whole_body['hybrid']['spect_time_point']}): "
              "TIA vs the SPECT TIA")
        for name, v in hybrid:
            print(f"  {name[:17]:<18}{v.hybrid_tia_bq_s / 3.6e9:12.1f} vs {v.tia_bq_s / 3.6e9:12.1f} MBq·h "
                  f"({v.hybrid_vs_spect_pct:+.1f} %)")
    reduced = [(n, v) for n, v in results.vois.items() if v.tia_full_bq_s]
    if reduced:
        print(f"\nReduced time points {results.time_points_used}: TIA vs the fit of all time points")
        for name, v in reduced:
            print(f"  {name[:17]:<18}{v.tia_bq_s / 3.6e9:12.1f} vs {v.tia_full_bq_s / 3.6e9:12.1f} MBq·h "
                  f"({100 * v.reduced_relative_difference:+.1f} %)")
    for a in results.assumptions:
        print(f"assumption: {a.message()}")
    for w in results.warnings:
        print(f"warning: {w}")


def _run(study, out, args, overwrite: bool) -> int:
    from .io.export import check_output_dir, check_output_outside_inputs
    from .pipeline import run_study, write_outputs

    opts = options.options_from_arguments(args, "run")
    check_output_dir(out, overwrite)
    check_output_outside_inputs(out, [study, *opts.extra_study_dirs])
    bar = TerminalProgress(quiet=args.quiet)
    try:
        results = run_study(study, opts, progress=bar)
        write_outputs(results, out, overwrite=overwrite)
    finally:
        bar.close()
    if not args.quiet:
        _print_table(results)  # its assumptions and warnings included
        print(f"\nOutputs: {out}")
    else:  # what the run assumed, once, whatever --quiet says (as reconstruct and cycles do)
        for a in results.assumptions:
            sys.stderr.write(f"assumption: {a.message()}\n")
    return 0


def _add_run_options(p: argparse.ArgumentParser) -> None:
    options.add_arguments(p, "run")
    options.add_arguments(p, "output")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")


def cmd_run(args) -> int:
    return _run(args.study, args.out, args, args.overwrite)


def cmd_dvh(args) -> int:
    from .dvh import dvh_from_files, plot_dvh, write_dvh_csv
    from .io.export import atomic_output_dir, write_json
    stats, dvhs = dvh_from_files(args.dose, args.structures, supersample=args.supersample)
    with atomic_output_dir(args.out, overwrite=args.overwrite) as tmp:
        write_json(tmp / "results.json", {"dose": str(args.dose), "structures": str(args.structures),
                                          "vois": stats})
        write_dvh_csv(tmp / "dvh.csv", dvhs)
        plot_dvh(tmp / "dvh.png", dvhs, title=f"Cumulative DVH — {Path(args.dose).name}")
    if not args.quiet:
        print(f"{'VOI':<24}{'vol mL':>10}{'mean Gy':>10}{'D2':>8}{'D50':>8}{'D98':>8}{'max':>8}")
        for name, s in stats.items():
            print(f"{name[:23]:<24}{s['volume_ml']:10.2f}{s['mean_dose_gy']:10.3f}{s['d2_gy']:8.3f}"
                  f"{s['d50_gy']:8.3f}{s['d98_gy']:8.3f}{s['max_dose_gy']:8.3f}")
    return 0


def cmd_reconstruct(args) -> int:
    from .assumptions import recording
    from .recon.backend import require_pytomography
    from .recon.reconstruct import ReconstructionWarning, reconstruct_study
    opts = options.options_from_arguments(args, "reconstruct")
    injection = _injection_kwargs(args)
    require_pytomography("ludosimetry reconstruct")
    bar = TerminalProgress(quiet=args.quiet)
    try:
        with recording() as assumed, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ReconstructionWarning)
            written = reconstruct_study(args.study, args.out, opts, progress=bar, overwrite=args.overwrite,
                                        **injection)
    finally:
        bar.close()
    # what the reconstruction assumed or wants known, once, whatever --quiet says
    for a in assumed.items:
        sys.stderr.write(f"assumption: {a.message()}\n")
    for w in caught:
        if issubclass(w.category, ReconstructionWarning):
            sys.stderr.write(f"warning: {w.message}\n")
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if not args.quiet:
        for path in written:
            print(f"wrote {path}")
        print(f"\nUse it: ludosimetry run {args.study} --recon-dir {args.out} --spect reconstructed --out RESULTS")
    return 0


def cmd_phantom(args) -> int:
    from .io.export import atomic_output_dir
    from .phantom import write_synthetic_patient, write_twin
    if args.preset and not args.no_projections:
        from .recon.backend import require_pytomography
        require_pytomography("writing the twin's SPECT projections (work 6)",
                             alternative="give --no-projections to write the twin without them")
    bar = TerminalProgress(quiet=args.quiet)
    try:
        with atomic_output_dir(args.out, overwrite=args.overwrite) as tmp:
            if args.preset:
                where = write_twin(tmp, preset=args.preset, seed=args.seed, fast=args.fast, progress=bar,
                                   projections=not args.no_projections)
                where = Path(args.out) / where.relative_to(tmp)
            else:
                write_synthetic_patient(tmp, seed=args.seed, fast=args.fast, noise=not args.noise_free,
                                        progress=bar)
                where = Path(args.out)
    finally:
        bar.close()
    if not args.quiet:
        kind = f"digital twin of the collection's {args.preset}" if args.preset else "synthetic patient"
        print(f"{kind} written to {where} (truth in {where / 'truth.json'})")
    return 0


def cmd_cycles(args) -> int:
    import csv

    from .cycles import arithmetic_lines, summarize_cycle_results, summary_table_rows
    from .io.export import atomic_output_dir, check_output_dir, write_json
    from .io.results_json import read_results_json
    check_output_dir(args.out, args.overwrite)
    results = [(str(p), read_results_json(p)) for p in args.results]
    next_gbq = None if args.next_activity_mbq is None else args.next_activity_mbq / 1e3
    summary = summarize_cycle_results(results, next_activity_gbq=next_gbq,
                                      kidney_risk_factors=args.kidney_risk_factors, strict=args.strict)
    rows = summary_table_rows(summary)
    lines = arithmetic_lines(summary)
    with atomic_output_dir(args.out, overwrite=args.overwrite) as tmp:
        write_json(tmp / "cycles.json", summary.to_json())
        with open(tmp / "cycles.csv", "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(rows)
        (tmp / "cycles.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for a in summary.assumptions:
        sys.stderr.write(f"assumption: {a.message()}\n")
    if not args.quiet:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)))
        for line in lines:
            print(line)
    return 0


def cmd_batch(args) -> int:
    from .cohort import dashboard_link, open_client, read_cohort, require_dask, run_cohort
    from .cohort_report import write_cohort_report
    from .io.export import check_output_outside_inputs

    require_dask()
    opts = options.options_from_arguments(args, "run")
    entries = read_cohort(args.cohort)
    # a folder of studies: an output inside it would be taken as a study by the next batch over the folder
    check_output_outside_inputs(args.out, [args.cohort if Path(args.cohort).is_dir() else None,
                                           *(e.study for e in entries), *opts.extra_study_dirs])
    client, cluster = open_client(args.workers, args.scheduler, args.memory_limit)
    try:
        if not args.quiet:
            print(f"{len(entries)} studies on {len(client.scheduler_info().get('workers', {}))} Dask workers; "
                  f"dashboard: {dashboard_link(client, cluster)}", flush=True)

        def show(o) -> None:
            if o.status == "failed":
                sys.stderr.write(f"ludosimetry: error: {o.failure_line()}\n")
            elif not args.quiet:
                print(f"{o.status:>7} {o.patient_id}/{o.cycle} ({o.seconds:.1f} s) {o.study}", flush=True)
            for a in o.assumptions:
                sys.stderr.write(f"assumption: {o.study}: {a}\n")

        summary = run_cohort(entries, args.out, opts, client, report=show,
                             progress_bar=not args.quiet and sys.stderr.isatty())
        # the plots and report page on a worker: its plotting modules and fonts are loaded by the runs already
        client.submit(write_cohort_report, str(Path(args.out).absolute()), pure=False).result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    if not args.quiet:
        print(f"{summary['ran']} ran, {summary['skipped']} skipped (unchanged), {summary['failed']} failed in "
              f"{summary['seconds']:.1f} s; cohort table, summary, population plots and cohort_report.html in "
              f"{args.out}")
    return 2 if summary["failed"] else 0


def _print_written(args, written) -> int:
    """Print the files a report command wrote (unless ``--quiet``); exit status 0."""
    if not args.quiet:
        for path in written:
            print(f"wrote {path}")
    return 0


def cmd_cohort_report(args) -> int:
    from .cohort_report import write_cohort_report
    return _print_written(args, write_cohort_report(args.out))


def cmd_population(args) -> int:
    from .population import command
    data, skipped = command(args.cohort, args.out, args.organ_type, (args.model,), overwrite=args.overwrite)
    for line in skipped:
        sys.stderr.write(f"ludosimetry: warning: organ type left out: {line}\n")
    if not args.quiet:
        print(f"{'organ type':<14}{'model':<18}{'curves':>7}{'typical T_eff h':>16}{'BSV (SD of ln)':>24}"
              f"{'residual':>10}")
        for typ, e in data["organ_types"].items():
            bsv = "/".join(f"{w:.2f}" for w in e["omega"])
            print(f"{typ[:13]:<14}{e['model']:<18}{e['n_subjects']:>7}{e['typical_effective_half_life_h']:>16.1f}"
                  f"{bsv:>24}{e['sigma']:>10.3f}")
        print(f"wrote {args.out}")
    return 0


def cmd_report(args) -> int:
    from .patient_report import write_report
    return _print_written(args, write_report(args.out))


def cmd_demo(args) -> int:
    from .phantom import write_synthetic_patient
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="ludosimetry-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    study = base / "study"
    out = base / "results"
    if not args.quiet:
        print(f"Writing the synthetic patient to {study} ...")
    bar = TerminalProgress(quiet=args.quiet)
    try:
        if not (study / "truth.json").exists():
            from .io.export import atomic_output_dir
            with atomic_output_dir(study, overwrite=args.overwrite) as tmp:
                write_synthetic_patient(tmp, seed=args.seed, fast=args.fast, progress=bar)
    finally:
        bar.close()
    truth = json.loads((study / "truth.json").read_text())
    if args.pvc is None:
        args.pvc = "gtm"
        if args.psf_fwhm_mm is None:
            from .pvc import image_fwhm_mm
            sim = truth["simulation"]
            voxel = sum(sim["spect_spacing_mm"]) / 3.0
            args.psf_fwhm_mm = round(image_fwhm_mm(float(sim["fwhm_mm"]), voxel), 1)
        if not args.quiet:
            print(f"Partial-volume correction: GTM with the phantom's image resolution, {args.psf_fwhm_mm:g} mm "
                  "FWHM (system blur and voxel averaging; --pvc none to switch it off)")
    rc = _run(study, out, args, overwrite=True if args.dir is None else args.overwrite)
    if not args.quiet:
        res = json.loads((out / "results.json").read_text())
        print(f"\nAgainst the phantom's truth ({study / 'truth.json'}):")
        print(f"{'VOI':<18}{'TIA err %':>10}{'mean dose err % (vs electrons-only truth)':>44}")
        for name, t in truth["vois"].items():
            r = res["vois"].get(name)
            if r is None:
                continue
            e_tia = 100 * (r["tia_bq_s"] / t["tia_bq_s"] - 1)
            e_d = 100 * (r["mean_dose_gy"] / t["mean_dose_gy_electrons"] - 1)
            print(f"{name[:17]:<18}{e_tia:10.1f}{e_d:44.1f}")
    return rc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ludosimetry", description="Lu-177 patient-specific dosimetry "
                                     "from post-therapy SPECT/CT")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="list the series, roles and time points of a study folder")
    p.add_argument("study")
    p.add_argument("--json", action="store_true", help="machine-readable inventory")
    _add_injection(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("run", help="compute TIA and absorbed doses for a study")
    p.add_argument("study")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    _add_run_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("dvh", help="per-VOI statistics and DVH of any RT Dose with an RTSTRUCT")
    p.add_argument("--dose", required=True, help="RT Dose file")
    p.add_argument("--structures", required=True, help="RTSTRUCT file")
    p.add_argument("--out", required=True)
    p.add_argument("--supersample", type=int, default=1, help="in-plane sub-samples per voxel edge")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_dvh)

    p = sub.add_parser("reconstruct", help="reconstruct SPECT (Bq/mL) from the projections with PyTomography")
    p.add_argument("study")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per reconstruction)")
    options.add_arguments(p, "reconstruct")
    _add_injection(p)  # for the output header only; reconstruction does not need the injection
    options.add_arguments(p, "output")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("phantom", help="write the synthetic patient (with truth.json)")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast", action="store_true", help="small grid, for tests")
    p.add_argument("--noise-free", action="store_true")
    p.add_argument("--preset", choices=("patient4", "patient6"),
                   help="the digital twin of the published Lu-177 DOTATATE collection (all six works)")
    p.add_argument("--no-projections", action="store_true",
                   help="twin without work 6 (projections and mu-maps; the slow part)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("cycles", help="cumulative dose and BED over one patient's cycles, and how many "
                       "further cycles stay under the organ limits")
    p.add_argument("results", nargs="+", help="results.json of each cycle's run")
    p.add_argument("--out", required=True, help="output folder (cycles.json, cycles.csv, cycles.txt)")
    p.add_argument("--next-activity-mbq", type=float, help="activity of a further cycle (MBq); default: the "
                   "mean of the cycles given")
    p.add_argument("--kidney-risk-factors", action="store_true",
                   help="kidney BED limit 28 Gy instead of 40 Gy (Bodei et al. 2008)")
    p.add_argument("--strict", action="store_true", help="refuse instead of assuming")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_cycles)

    p = sub.add_parser("batch", help="run a cohort (folder of study folders or CSV manifest) on Dask workers",
                       description="One 'ludosimetry run' per patient-cycle into OUT/<patient>/<cycle>/, on a Dask "
                       "LocalCluster or an existing scheduler; unchanged, complete outputs are skipped; writes "
                       "cohort.csv, cohort.parquet, cohort_summary.json, failures.txt, the population plots and "
                       "cohort_report.html/.pdf. Exit status 0 when every study ran or was skipped, 2 when any "
                       "failed (each failure one line in failures.txt).")
    p.add_argument("cohort", metavar="COHORT", help="folder of study folders, or a CSV manifest with columns "
                   "study[,injected_activity_mbq,injection_time,cycle]")
    p.add_argument("--out", required=True, help="cohort output folder")
    p.add_argument("--workers", type=int, help="worker processes of the local cluster (default: CPU count)")
    p.add_argument("--memory-limit", default="auto", help="memory limit per local worker, e.g. 4GB (default auto)")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="an existing Dask scheduler instead")
    options.add_arguments(p, "run")
    p.add_argument("--quiet", action="store_true", help="no progress or per-study lines")
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("population", help="population kinetics of a cohort (nonlinear mixed-effects model per "
                       "organ type) for single-time-point runs (--reduced-method nlmm)",
                       description="Fits, per organ type (and lesions), a nonlinear mixed-effects model of the "
                       "time-activity curves of cohort.csv of 'ludosimetry batch' (LuDosimetryLib/population.py) and "
                       "writes population.json.")
    p.add_argument("cohort", metavar="COHORT_CSV", help="cohort.csv of 'ludosimetry batch'")
    p.add_argument("--out", required=True, help="population.json to write")
    declared = options.option("organ_types", "run")
    p.add_argument(declared.flag, dest="organ_type", action="append", metavar=declared.metavar, help=declared.help)
    p.add_argument("--model", choices=("auto", "bi_exponential", "mono_exponential"), default="auto",
                   help="structural model of every organ type (auto: the lower AIC of the two; default)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing population.json")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_population)

    p = sub.add_parser("report", help="rebuild report.html and report.pdf from a run's output folder alone")
    p.add_argument("out", metavar="OUT", help="output folder of 'ludosimetry run'")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("cohort-report", help="rebuild cohort_report.html/.pdf and the population plots from the "
                       "output folder of 'ludosimetry batch'")
    p.add_argument("out", metavar="OUT", help="output folder of 'ludosimetry batch'")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_cohort_report)

    p = sub.add_parser("demo", help="synthetic patient + run, then the per-VOI table")
    p.add_argument("--dir", help="folder for the study and results (default: a new temporary folder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast", action="store_true")
    _add_run_options(p)
    # The demo knows its scanner: partial-volume correction with the phantom's nominal resolution unless
    # --pvc none is given.
    p.set_defaults(func=cmd_demo, pvc=None)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line on stderr (not Python's two-line form with the source line)."""
    text = " ".join(str(message).split())
    sys.stderr.write(f"ludosimetry: warning: {text}\n")


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Warnings are shown when the command has finished: a command refused for bad input prints its one error
    # line alone, not the warnings its input gave on the way to the refusal.
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            code = int(args.func(args) or 0)
    except LuDosimetryError as exc:
        sys.stderr.write(f"ludosimetry: error: {exc.describe(options.cli_flag)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("ludosimetry: interrupted\n")
        return 130
    for w in caught:
        _show_warning(w.message, w.category, w.filename, w.lineno)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
