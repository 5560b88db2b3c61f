"""Headless LuDosimetry run: study folder → dosimetry outputs + a Slicer scene bundle (.mrb).

In 3D Slicer::

    Slicer --no-main-window --python-script LuDosimetry/Scripts/run_study.py --study DIR --out DIR

imports the study into a temporary DICOM database (kept open for the whole run, so that the patient and
study are known to Slicer's DICOM browser), runs the pipeline through
:class:`LuDosimetryLib.mrml.session.DosimetrySession` on ``slicer.mrmlScene``, writes the same files as
``ludosimetry run`` into ``--out`` and saves the scene (time points' SPECT/CT and VOI segmentations, dose,
TIA, results table, DVH and TAC charts, in the subject hierarchy) as ``--out/scene.mrb``.

In plain Python with the PyPI ``slicer-core`` package (MRML without the application)::

    python LuDosimetry/Scripts/run_study.py --study DIR --out DIR

does the same on a scene made by :func:`LuDosimetryLib.mrml.nodes.create_scene` (no DICOM database: the
study is read straight from the folder). Every option of ``ludosimetry run`` is accepted and checked before
anything is read or imported. The exit status is, as for ``ludosimetry run``: 0 on success, 2 with one line
(``error: ...``) on a bad argument, option or study, 1 with the traceback of an unexpected error (a bug); in
Slicer the application always exits with it (it never hangs).
"""
import argparse
import sys
import tempfile
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
# LuDosimetryLib: beside this script's module folder in Slicer's install tree, the repository root in a checkout.
for candidate in (HERE.parent.parent, HERE.parent):
    if (candidate / "LuDosimetryLib" / "__init__.py").is_file() and str(candidate) not in sys.path:
        sys.path.insert(0, str(candidate))

from LuDosimetryLib import options  # noqa: E402  (after the path above)

#: Name of the scene bundle written into the output folder.
SCENE_FILE = "scene.mrb"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="run_study.py", description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="study folder (DICOM SPECT/CT time points, RTSTRUCT)")
    parser.add_argument("--out", required=True, help="output folder (created; must be new or empty)")
    options.add_arguments(parser, "run")
    options.add_arguments(parser, "output")
    parser.add_argument("--no-time-points", action="store_true",
                        help="do not load each time point's SPECT/CT/VOIs into the scene")
    return parser.parse_args(argv)


def in_slicer_application() -> bool:
    try:
        import slicer
    except ImportError:
        return False
    return getattr(slicer, "app", None) is not None


def _print_progress():
    last = [-1]

    def progress(fraction, message):
        percent = int(100 * fraction)
        if percent // 10 != last[0] // 10:
            print(f"run_study: {percent:3d}% {message}", flush=True)
        last[0] = percent
    return progress


def run(args, scene, run_options) -> int:
    """Run the study on ``scene`` and save it; 0, or 2 with the one-line error on bad input."""
    from LuDosimetryLib.errors import LuDosimetryError
    from LuDosimetryLib.mrml.session import DosimetrySession

    out = Path(args.out)
    session = DosimetrySession(scene)
    try:
        results = session.run(args.study, out, run_options,
                              overwrite=args.overwrite, progress=_print_progress(), load_into_scene=True,
                              load_time_points=not args.no_time_points)
        bundle = session.save_scene(out / SCENE_FILE)
    except LuDosimetryError as error:
        print(f"error: {error.describe(options.cli_flag)}", file=sys.stderr)
        return 2
    for assumption in results.assumptions:
        print(f"assumption: {assumption.message()}", file=sys.stderr)
    for warning in results.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"run_study: {len(results.vois)} VOIs; results in {out}; scene saved as {bundle}")
    return 0


def run_in_slicer(args, run_options) -> int:
    """In Slicer: index the study into a temporary DICOM database, kept open while the run reads it."""
    import slicer
    from DICOMLib import DICOMUtils

    database_dir = tempfile.mkdtemp(prefix="ludosimetry-dicomdb-")
    with DICOMUtils.TemporaryDICOMDatabase(database_dir) as db:
        DICOMUtils.importDicom(str(args.study), db)
        patients = list(db.patients())
        if not patients:
            print(f"error: {args.study}: no DICOM file could be indexed", file=sys.stderr)
            return 2
        print(f"run_study: {len(patients)} patient(s) indexed in the temporary DICOM database {database_dir}")
        return run(args, slicer.mrmlScene, run_options)


def main(argv=None) -> int:
    from LuDosimetryLib.errors import LuDosimetryError

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:  # every option checked before the study is imported or read
        run_options = options.options_from_arguments(args, "run")
    except LuDosimetryError as error:
        print(f"error: {error.describe(options.cli_flag)}", file=sys.stderr)
        return 2
    if in_slicer_application():
        return run_in_slicer(args, run_options)
    from LuDosimetryLib.mrml.nodes import create_scene, release_scene

    scene = create_scene()
    try:
        return run(args, scene, run_options)
    finally:
        release_scene(scene)


if __name__ == "__main__":
    status = 1
    try:
        status = main()
    except SystemExit as exit_request:  # argparse: 2 on bad arguments, 0 for --help
        status = exit_request.code if isinstance(exit_request.code, int) else 2
    except Exception:  # a bug: the traceback, and still an exit (Slicer would otherwise wait forever)
        traceback.print_exc()
        status = 1
    finally:
        if in_slicer_application():
            import slicer
            slicer.util.exit(status)
    sys.exit(status)
