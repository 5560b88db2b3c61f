"""Headless LuDosimetry run: study folder → dosimetry outputs + a Slicer scene bundle (.mrb).

In 3D Slicer::

    Slicer --no-main-window --python-script LuDosimetry/Scripts/run_study.py --study DIR --out DIR

imports the study into a temporary DICOM database (so that the patient and study are known to Slicer's
DICOM browser for the run), runs the pipeline through ``LuDosimetryLogic``, writes the same files as
``ludosimetry run`` into ``--out`` and saves the scene (time points' SPECT/CT and VOI segmentations,
dose, TIA, results table, DVH and TAC charts, in the subject hierarchy) as ``--out/scene.mrb``.

In plain Python with the PyPI ``slicer-core`` package (MRML without the application)::

    python LuDosimetry/Scripts/run_study.py --study DIR --out DIR

does the same on a scene made by ``LuDosimetryLib.mrml.create_scene`` (no DICOM database: the study
is read straight from the folder). The exit status is 0 on success, 1 with the one-line error of
``ludosimetry run`` on bad input, 2 on bad arguments.
"""
import argparse
import os
import sys
import tempfile
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULE_DIR = HERE.parent

#: Name of the scene bundle written into the output folder.
SCENE_FILE = "scene.mrb"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="run_study.py", description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="study folder (DICOM SPECT/CT time points, RTSTRUCT)")
    parser.add_argument("--out", required=True, help="output folder (created; must be new or empty)")
    parser.add_argument("--dose-method", choices=("dvk", "ldm"), default="dvk")
    parser.add_argument("--injected-activity-mbq", type=float, default=None)
    parser.add_argument("--pvc", choices=("none", "gtm"), default="none")
    parser.add_argument("--psf-fwhm-mm", type=float, default=None)
    parser.add_argument("--no-density-correction", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--no-time-points", action="store_true",
                        help="do not load each time point's SPECT/CT/VOIs into the scene")
    return parser.parse_args(argv)


def _in_slicer_application() -> bool:
    try:
        import slicer
    except ImportError:
        return False
    return getattr(slicer, "app", None) is not None


def _install_stand_ins() -> None:
    """Minimal stand-ins for the Slicer application modules LuDosimetry.py imports at its top (Qt, CTK,
    ScriptedLoadableModule, parameterNodeWrapper), so that its logic runs over slicer-core's MRML.

    Only the logic is used here: the widget classes are defined but never instantiated.
    """
    import slicer

    class _Base:
        def __init__(self, *args, **kwargs):
            pass

    class _Logic(_Base):
        def getParameterNode(self):
            raise RuntimeError("parameter nodes need the Slicer application")

    if "slicer.ScriptedLoadableModule" not in sys.modules:
        slm = types.ModuleType("slicer.ScriptedLoadableModule")
        slm.ScriptedLoadableModule = slm.ScriptedLoadableModuleWidget = _Base
        slm.ScriptedLoadableModuleLogic = _Logic
        slm.ScriptedLoadableModuleTest = type("ScriptedLoadableModuleTest", (), {})
        sys.modules[slm.__name__] = slm
        slicer.ScriptedLoadableModule = slm
    if "slicer.parameterNodeWrapper" not in sys.modules:
        pnw = types.ModuleType("slicer.parameterNodeWrapper")
        pnw.Choice = pnw.WithinRange = lambda *args, **kwargs: None
        pnw.GuiConnector = _Base
        pnw.parameterNodeGuiConnector = pnw.parameterNodeWrapper = lambda cls: cls
        pnw.unannotatedType = lambda datatype: datatype
        sys.modules[pnw.__name__] = pnw
        slicer.parameterNodeWrapper = pnw
    for name in ("qt", "ctk"):
        if name not in sys.modules:
            try:
                __import__(name)
            except ImportError:
                sys.modules[name] = types.ModuleType(name)


def import_module_file():
    """The LuDosimetry module (LuDosimetry.py), imported in Slicer or over slicer-core with stand-ins."""
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    if str(MODULE_DIR.parent) not in sys.path:  # LuDosimetryLib in a source checkout
        sys.path.insert(1, str(MODULE_DIR.parent))
    if not _in_slicer_application():
        _install_stand_ins()
    import LuDosimetry
    return LuDosimetry


def import_into_dicom_database(study: Path):
    """In Slicer: index the study into a temporary DICOM database (returns the database folder)."""
    import slicer
    from DICOMLib import DICOMUtils

    database_dir = tempfile.mkdtemp(prefix="ludosimetry-dicomdb-")
    with DICOMUtils.TemporaryDICOMDatabase(database_dir) as db:
        DICOMUtils.importDicom(str(study), db)
        patients = list(db.patients())
        print(f"run_study: {len(patients)} patient(s) indexed in the temporary DICOM database {database_dir}")
    return database_dir


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    module = import_module_file()
    from LuDosimetryLib import mrml
    from LuDosimetryLib.errors import LuDosimetryError

    study, out = Path(args.study), Path(args.out)
    in_slicer = _in_slicer_application()
    try:
        if in_slicer:
            import slicer
            import_into_dicom_database(study)
            scene = slicer.mrmlScene
        else:
            scene = mrml.create_scene()
        logic = module.LuDosimetryLogic(scene=scene)
        last = [-1]

        def progress(fraction, message):
            percent = int(100 * fraction)
            if percent // 10 != last[0] // 10:
                print(f"run_study: {percent:3d}% {message}", flush=True)
            last[0] = percent

        results = logic.run(study, out, dose_method=args.dose_method,
                            injected_activity_bq=None if args.injected_activity_mbq is None
                            else args.injected_activity_mbq * 1e6,
                            overwrite=args.overwrite, progress=progress, load_into_scene=True,
                            pvc=args.pvc, psf_fwhm_mm=args.psf_fwhm_mm,
                            density_correction=not args.no_density_correction,
                            load_time_points=not args.no_time_points)
        bundle = logic.saveScene(out / SCENE_FILE)
    except LuDosimetryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for warning in results.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"run_study: {len(results.vois)} VOIs; results in {out}; scene saved as {bundle}")
    return 0


if __name__ == "__main__":
    status = main()
    if _in_slicer_application():
        import slicer
        slicer.util.exit(status)
    else:
        sys.exit(status)
