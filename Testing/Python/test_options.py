"""The options of a run and of a reconstruction (LuDosimetryLib.options), declared once.

- the declarations: one per RunOptions/ReconOptions field, unique flags and parameter names, defaults that
  are valid and that the panel shows as they are;
- the command line and the panel give the SAME RunOptions/ReconOptions for the same user values (MBq,
  ISO 8601 text, "2,3", 1-based time points, the VOI model table), and unset panel values mean "not given";
- ``validate`` refuses each bad value or combination with an OptionError naming the option, which the
  command line shows as its ``--flag``, and it does so before the study is read (the study folders here do
  not exist: the error must be the option's, not the folder's).
"""
from __future__ import annotations

import ast
import dataclasses
import json
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from LuDosimetryLib import cli, options
from LuDosimetryLib.errors import LuDosimetryError, OptionError, OutputError
from LuDosimetryLib.options import ReconOptions, RunOptions

LIB_DIR = Path(__file__).resolve().parents[2] / "LuDosimetryLib"


# ---------------------------------------------------------------------------------------- front ends

def _cli_options(argv, command="run"):
    """The options ``ludosimetry <command>`` makes of ``argv`` (the real parser of the CLI)."""
    args = cli.build_parser().parse_args([command, "study", "--out", "out", *argv])
    return options.options_from_arguments(args, "run" if command == "run" else "reconstruct")


def _panel_values(group="run", **values):
    """A parameter node's values: every field at its default, ``values`` changed (user units)."""
    node = {p.name: p.default for p in options.panel_parameters((group, "output"))}
    unknown = set(values) - set(node)
    assert not unknown, f"not panel parameters: {unknown}"
    node.update(values)
    return node


def _panel_options(group="run", **values):
    return options.options_from_panel(_panel_values(group, **values), group)


# --------------------------------------------------------------------------------------- declarations

def test_every_options_field_is_declared_once():
    for cls, group in ((RunOptions, "run"), (ReconOptions, "reconstruct")):
        names = [f.name for f in dataclasses.fields(cls)]
        assert names == options.option_names(group)
        assert len(names) == len(set(names)), f"{cls.__name__}: a field is declared twice"
        for f in dataclasses.fields(cls):  # the field's default is the declaration's
            assert f.default == options.option(f.name, group).default, f.name
    # The library's classes are these.
    from LuDosimetryLib import pipeline
    assert pipeline.RunOptions is RunOptions


def test_the_pipeline_reads_only_declared_options():
    tree = ast.parse((LIB_DIR / "pipeline.py").read_text(encoding="utf-8"))
    read = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (
                (isinstance(node.value, ast.Name) and node.value.id in ("options", "opts"))
                or (isinstance(node.value, ast.Attribute) and node.value.attr == "options")):
            read.add(node.attr)
    assert {"dose_method", "time_points", "models_per_voi"} <= read  # the reads are seen
    undeclared = read - set(options.option_names("run")) - {"validate"}
    assert not undeclared, f"the pipeline reads options that are not declared: {sorted(undeclared)}"


def test_no_module_declares_option_classes_of_its_own():
    """RunOptions and ReconOptions exist once, generated in options.py; no module keeps its own copy."""
    import LuDosimetryLib

    root = Path(LuDosimetryLib.__file__).parent
    owners = []
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name in ("RunOptions", "ReconOptions"):
                owners.append(f"{path.relative_to(root)}:{node.name}")
    assert not owners, owners
    from LuDosimetryLib.recon import reconstruct
    assert reconstruct.ReconOptions is ReconOptions


def test_flags_and_parameter_names_are_unique_and_well_formed():
    flags = [o.flag for o in options.ALL_OPTIONS if o.flag]
    parameters = [o.parameter for o in options.ALL_OPTIONS if o.parameter]
    assert len(flags) == len(set(flags)), sorted(f for f in flags if flags.count(f) > 1)
    assert len(parameters) == len(set(parameters)), sorted(p for p in parameters if parameters.count(p) > 1)
    for group in ("run", "reconstruct", "output"):
        names = options.option_names(group)
        assert len(names) == len(set(names)), group
    for declared in options.ALL_OPTIONS:
        assert declared.kind in options.KINDS, declared.name
        assert declared.help.strip(), declared.name
        if declared.kind == "internal":
            assert declared.flag is None and declared.parameter is None, f"{declared.name}: internal, not shown"
            continue
        if declared.flag:
            assert declared.flag.startswith("--") and declared.flag == declared.flag.lower(), declared.flag
        if declared.kind == "bool" and declared.flag:
            # A default of True is switched off with --no-…; a default of False switched on.
            assert declared.flag.startswith("--no-") == bool(declared.default), declared.flag
        if declared.kind == "choice":
            assert declared.default in declared.choices and len(set(declared.choices)) == len(declared.choices)


def test_defaults_are_valid_and_the_panel_shows_them():
    RunOptions().validate()
    ReconOptions().validate()
    for parameter in options.panel_parameters():
        declared = parameter.option
        shown = None if parameter.default == declared.panel_unset else parameter.default
        assert declared.parse(shown) == declared.default, parameter.name
        assert parameter.type is {"float": float, "int": int, "bool": bool}.get(declared.kind, str), parameter.name
        if parameter.range is not None:
            low, high = parameter.range
            assert low <= parameter.default <= high, parameter.name
            for end in (low, high):  # every end of a spin box is a valid value, or the "not given" one
                if end != declared.panel_unset:
                    declared.check(declared.parse(end))


def test_every_flag_is_on_its_command(capsys):
    for command, groups in (("run", ("run", "output")), ("reconstruct", ("reconstruct", "output"))):
        with pytest.raises(SystemExit) as exit_:
            cli.main([command, "--help"])
        assert exit_.value.code == 0
        shown = capsys.readouterr().out
        for group in groups:
            for declared in options.ALL_OPTIONS:
                if declared.group == group and declared.flag:
                    assert declared.flag in shown, f"ludosimetry {command}: no {declared.flag}"


# ------------------------------------------------------------------- the same options from both front ends

#: (case, command-line arguments, panel values (user units), expected library values)
SAME_OPTIONS = [
    ("defaults", [], {}, {}),
    ("activity in MBq", ["--injected-activity-mbq", "7400.5"], {"injectedActivityMBq": 7400.5},
     {"injected_activity_bq": 7400.5e6}),
    ("ISO injection time", ["--injection-time", "2024-03-05T09:30"], {"injectionTime": "2024-03-05T09:30:00"},
     {"injection_time": datetime(2024, 3, 5, 9, 30)}),
    ("time points with commas / semicolons, 1-based reference", ["--time-points", "2,3", "--reference-time-point", "2"],
     {"reducedTimePoints": "2; 3", "referenceTimePoint": 2}, {"time_points": (2, 3), "reference_time_point": 1}),
    ("time points with semicolons / commas", ["--time-points", "2; 3", "--reference-time-point", "3"],
     {"reducedTimePoints": "2,3", "referenceTimePoint": 3}, {"time_points": (2, 3), "reference_time_point": 2}),
    ("first time point is 1", ["--reference-time-point", "1"], {"referenceTimePoint": 1}, {"reference_time_point": 0}),
    ("VOI models", ["--voi-model", "Liver=trapezoid", "--voi-model", "Kidney_L=mono", "--voi-model", "Spleen=auto",
                    "--voi-model", "Lésion=1=bi"],
     {"voiModels": json.dumps({"Liver": "trapezoid", "Kidney_L": "mono", "Spleen": "auto", "Lésion=1": "bi"})},
     {"models_per_voi": {"Liver": ("trapezoid",), "Kidney_L": ("mono_exponential",),
                         "Lésion=1": ("bi_exponential",)}}),
    ("VOI models all on auto", ["--voi-model", "Liver=auto"], {"voiModels": '{"Liver": "auto"}'},
     {"models_per_voi": None}),
    ("methods", ["--dose-method", "ldm", "--tia-map", "voxel", "--registration", "deformable", "--vois",
                 "reference-only", "--reduced-method", "hanscheid", "--time-points", "1,3"],
     {"doseMethod": "ldm", "tiaMap": "voxel", "registrationMethod": "deformable", "voiMode": "reference-only",
      "reducedMethod": "hanscheid", "reducedTimePoints": "1,3"},
     {"dose_method": "ldm", "tia_map": "voxel", "registration": "deformable", "vois": "reference-only",
      "reduced_method": "hanscheid", "time_points": (1, 3)}),
    ("partial-volume correction", ["--pvc", "gtm", "--psf-fwhm-mm", "6.5"], {"pvc": "gtm", "psfFwhmMm": 6.5},
     {"pvc": "gtm", "psf_fwhm_mm": 6.5}),
    ("no density correction", ["--no-density-correction"], {"densityCorrection": False}, {"density_correction": False}),
    ("kernel file", ["--kernel", "/data/DK.hdr", "--kernel-density-g-ml", "1.04"],
     {"kernelFile": "/data/DK.hdr", "kernelDensityGMl": 1.04},
     {"kernel_path": "/data/DK.hdr", "kernel_density_g_ml": 1.04}),
    ("syringe residual in MBq", ["--residual-activity-mbq", "120.5"], {"residualActivityMBq": 120.5},
     {"residual_activity_bq": 120.5e6}),
    ("fit error model", ["--fit-weighting", "counting"], {"fitWeighting": "counting"}, {"fit_weighting": "counting"}),
    # Repeatable text options: one flag per item on the command line, items separated by commas in the panel
    # (an item with a comma in double quotes).
    ("organ types", ["--organ-type", "Lesion, 1=tumour", "--organ-type", "Kidney_L=kidney"],
     {"organTypes": '"Lesion, 1=tumour", Kidney_L=kidney'}, {"organ_types": ("Lesion, 1=tumour", "Kidney_L=kidney")}),
    ("population half-lives", ["--population-half-life", "kidney=50:0.2", "--population-half-life", "liver=70",
                               "--reduced-method", "madsen", "--time-points", "1"],
     {"populationHalfLives": "kidney=50:0.2,liver=70", "reducedMethod": "madsen", "reducedTimePoints": "1"},
     {"population_half_lives": ("kidney=50:0.2", "liver=70"), "reduced_method": "madsen", "time_points": (1,)}),
    ("radiobiology table", ["--radiobiology", "kidney=2.5:2.8", "--radiobiology", "liver=2.5:1.5"],
     {"radiobiologyTissues": " kidney=2.5:2.8 ,liver=2.5:1.5, "},
     {"radiobiology": ("kidney=2.5:2.8", "liver=2.5:1.5")}),
    ("an earlier cycle's kinetics", ["--kinetics-from", "/data/c1/results.json", "--time-points", "3",
                                     "--reference-time-point", "3"],
     {"kineticsFrom": "/data/c1/results.json", "reducedTimePoints": "3", "referenceTimePoint": 3},
     {"kinetics_from": "/data/c1/results.json", "time_points": (3,), "reference_time_point": 2}),
    # #14 whole body and red marrow
    ("planar left out", ["--no-planar"], {"usePlanar": False}, {"planar": False}),
    ("planar calibration and hybrid", ["--planar-calibration-cps-per-mbq", "9.5", "--hybrid", "2"],
     {"planarCalibrationCpsPerMBq": 9.5, "hybridTimePoint": 2},
     {"planar_calibration_cps_per_mbq": 9.5, "hybrid_time_point": 1}),
    ("red marrow", ["--marrow-method", "blood", "--blood-samples", "/data/blood.csv", "--rmblr", "0.8",
                    "--patient-sex", "F"],
     {"marrowMethod": "blood", "bloodSamples": "/data/blood.csv", "rmblr": 0.8, "patientSex": "F"},
     {"marrow_method": "blood", "blood_samples": "/data/blood.csv", "rmblr": 0.8, "patient_sex": "F"}),
    ("panel values that mean 'not given'", [],
     {"injectedActivityMBq": 0.0, "psfFwhmMm": 0.0, "injectionTime": "", "reducedTimePoints": "", "kernelFile": "",
      "voiModels": "", "residualActivityMBq": 0.0, "organTypes": " , ", "populationHalfLives": "",
      "radiobiologyTissues": "", "kineticsFrom": "", "planarCalibrationCpsPerMBq": 0.0, "hybridTimePoint": 0,
      "bloodSamples": "", "rmblr": 0.0, "marrowMethod": "none", "patientSex": "auto", "usePlanar": True}, {}),
]


@pytest.mark.parametrize("argv, panel, expected", [c[1:] for c in SAME_OPTIONS], ids=[c[0] for c in SAME_OPTIONS])
def test_command_line_and_panel_give_the_same_run_options(argv, panel, expected):
    from_cli = _cli_options(argv)
    from_panel = _panel_options(**panel)
    assert from_cli == RunOptions(**expected)
    assert from_panel == from_cli
    # A parameter node is read by attribute, the same way.
    assert options.options_from_panel(SimpleNamespace(**_panel_values(**panel))) == from_cli


def test_options_only_the_command_line_offers():
    got = _cli_options(["--spect-series", "1.2.3", "--spect-series", "1.2.4", "--spect-calibration", "2.5",
                        "--spect", "vendor", "--recon-dir", "a", "--recon-dir", "b"])
    assert got == RunOptions(spect_series_uid=("1.2.3", "1.2.4"), spect_calibration_bq_per_ml_per_unit=2.5,
                             spect_source="vendor", extra_study_dirs=("a", "b"))
    # The panel leaves them at their defaults.
    panel = _panel_options()
    assert (panel.spect_series_uid, panel.spect_calibration_bq_per_ml_per_unit, panel.spect_source,
            panel.extra_study_dirs) == (None, None, "auto", ())


def test_library_values_that_neither_front_end_offers():
    masks = [{"Liver": None}]
    assert _panel_options().masks_per_time_point is None
    assert options.options_from_panel(_panel_values(), masks_per_time_point=masks).masks_per_time_point is masks
    args = cli.build_parser().parse_args(["run", "s", "--out", "o"])
    assert options.options_from_arguments(args, masks_per_time_point=masks).masks_per_time_point is masks


@pytest.mark.parametrize("argv, panel, expected", [
    ([], {}, {}),
    (["--algorithm", "bsrem", "--iterations", "3", "--subsets", "6", "--no-psf", "--scatter", "dew", "--dew-k", "0.5"],
     {"reconAlgorithm": "bsrem", "reconIterations": 3, "reconSubsets": 6, "reconPsf": False, "reconScatter": "dew",
      "reconDewK": 0.5},
     {"algorithm": "bsrem", "iterations": 3, "subsets": 6, "psf": False, "scatter": "dew", "dew_k": 0.5}),
    (["--collimator", "SY-ME", "--dead-time-factor", "1.05"], {"reconCollimator": "SY-ME", "reconDeadTimeFactor": 1.05},
     {"collimator": "SY-ME", "dead_time_factor": 1.05}),
    ([], {"reconDewK": 0.0, "reconCollimator": "auto", "reconDeadTimeFactor": 1.0}, {}),  # "not given" / defaults
], ids=["defaults", "bsrem", "collimator and dead time", "panel values that mean 'not given'"])
def test_command_line_and_panel_give_the_same_recon_options(argv, panel, expected):
    from_cli = _cli_options(argv, "reconstruct")
    assert from_cli == ReconOptions(**expected)
    assert _panel_options("reconstruct", **panel) == from_cli


#: Options only the command line offers: the choice among a study's series, its calibration and extra
#: folders, the projection forms (the panel takes the study as scanned and reconstructs every form).
COMMAND_LINE_ONLY = {"spect_series_uid", "spect_calibration_bq_per_ml_per_unit", "spect_source", "extra_study_dirs",
                     "calibration_cps_per_mbq", "forms",
                     # the panel has no widget for it: its recompute passes the regions edited in its planar view
                     "planar_regions"}


def test_the_panel_offers_every_option_but_those_of_the_command_line_only():
    missing = [o.name for o in options.ALL_OPTIONS if o.kind != "internal" and not o.parameter
               and o.name not in COMMAND_LINE_ONLY]
    assert not missing, f"options without a panel widget: {missing}"
    assert all(not options.option(name).parameter for name in COMMAND_LINE_ONLY)


def test_repeated_text_from_the_panel_is_split_on_commas_not_on_the_command_line():
    declared = options.option("organ_types")
    # The panel hands in one text: items separated by commas (spaces around them dropped, empty items too);
    # an item that holds a comma is written in double quotes.
    assert declared.parse("Liver=liver, Kidney_L=kidney") == ("Liver=liver", "Kidney_L=kidney")
    assert declared.parse(' "Lesion, 1=tumour" ,, Spleen=spleen, ') == ("Lesion, 1=tumour", "Spleen=spleen")
    assert declared.parse(" , ") is None and declared.parse("") is None  # no item: not given
    # The command line hands in a list (one item per flag): each item kept whole, commas and all.
    assert declared.parse(["Lesion, 1=tumour", " Liver=liver"]) == ("Lesion, 1=tumour", " Liver=liver")
    assert _cli_options(["--organ-type", "Lesion, 1=tumour"]).organ_types == ("Lesion, 1=tumour",)
    # The panel shows a library value as text that reads back the same.
    for value in (("Liver=liver",), ("Lesion, 1=tumour", 'say "x"=y', "Kidney_L=kidney")):
        shown = declared.format(value)
        assert isinstance(shown, str) and declared.parse(shown) == value, shown
    assert declared.format(("Liver=liver", "Kidney_L=kidney")) == "Liver=liver, Kidney_L=kidney"
    assert declared.format(None) == ""


def test_command_line_only_recon_options():
    assert _cli_options(["--calibration-cps-per-mbq", "9.5", "--form", "unaltered", "--form", "advanced"],
                        "reconstruct") == ReconOptions(calibration_cps_per_mbq=9.5, forms=("unaltered", "advanced"))


def test_panel_shows_library_values_in_user_units():
    """Option.format is the inverse of parse: what the panel shows of a RunOptions reads back the same."""
    chosen = RunOptions(injected_activity_bq=7.4e9, injection_time=datetime(2024, 3, 5, 9, 30), time_points=(2, 3),
                        reference_time_point=2, psf_fwhm_mm=6.5, pvc="gtm", kernel_path="/k.hdr",
                        models_per_voi={"Liver": ("trapezoid",), "Spleen": ("mono_exponential",)},
                        residual_activity_bq=1.2e8, fit_weighting="uniform",
                        organ_types=("Lesion, 1=tumour", "Liver=liver"), radiobiology=("liver=2.5:1.5",))
    shown = {p.name: p.option.format(getattr(chosen, p.option.name)) for p in options.panel_parameters(("run",))}
    assert shown["injectedActivityMBq"] == 7400.0 and shown["referenceTimePoint"] == 3
    assert shown["reducedTimePoints"] == "2,3" and shown["injectionTime"] == "2024-03-05T09:30:00"
    assert json.loads(shown["voiModels"]) == {"Liver": "trapezoid", "Spleen": "mono"}
    assert shown["residualActivityMBq"] == 120.0 and shown["organTypes"] == '"Lesion, 1=tumour", Liver=liver'
    assert options.options_from_panel(shown) == chosen
    recon = ReconOptions(scatter="dew", dew_k=0.55, collimator="GI-MEGP", dead_time_factor=1.1)
    shown = {p.name: p.option.format(getattr(recon, p.option.name)) for p in options.panel_parameters(("reconstruct",))}
    assert shown["reconDewK"] == 0.55 and options.options_from_panel(shown, "reconstruct") == recon
    assert options.panel_option("reconDewK").format(None) == 0.0  # the spin box's "not given"


# ------------------------------------------------------------------------------------------ refusals

#: (case, command-line arguments, option refused, panel values giving the same error (None: no such panel value))
REFUSED = [
    ("blood-based marrow without samples", ["--marrow-method", "blood"], "blood_samples", {"marrowMethod": "blood"}),
    ("negative red-marrow-to-blood ratio", ["--rmblr", "-0.5"], "rmblr", {"rmblr": -0.5}),
    ("hybrid at time point 0", ["--hybrid", "0"], "hybrid_time_point", None),  # 0 in the panel = not given
    ("zero activity", ["--injected-activity-mbq", "0"], "injected_activity_bq", None),  # 0 in the panel = not given
    ("negative activity", ["--injected-activity-mbq", "-5"], "injected_activity_bq", {"injectedActivityMBq": -5.0}),
    ("activity not a number", ["--injected-activity-mbq", "abc"], "injected_activity_bq", None),
    ("activity NaN", ["--injected-activity-mbq", "nan"], "injected_activity_bq", {"injectedActivityMBq": float("nan")}),
    ("injection time not ISO", ["--injection-time", "yesterday"], "injection_time", {"injectionTime": "yesterday"}),
    # read as midnight, a date alone moved every time point; an offset ended in a traceback (DICOM times have none)
    ("injection date without its time", ["--injection-time", "2018-11-15"], "injection_time",
     {"injectionTime": "2018-11-15"}),
    ("injection time with a UTC offset", ["--injection-time", "2018-11-15T09:22+01:00"], "injection_time",
     {"injectionTime": "2018-11-15T09:22Z"}),
    ("time points not numbers", ["--time-points", "2,x"], "time_points", {"reducedTimePoints": "2,x"}),
    ("time point 0", ["--time-points", "0,2"], "time_points", {"reducedTimePoints": "0,2"}),
    ("time point not whole", ["--time-points", "2.5"], "time_points", {"reducedTimePoints": "2.5"}),
    ("reference not among the time points", ["--time-points", "2,3"], "time_points", {"reducedTimePoints": "2,3"}),
    ("reference time point 0", ["--reference-time-point", "0"], "reference_time_point", {"referenceTimePoint": 0}),
    ("reference time point not whole", ["--reference-time-point", "1.5"], "reference_time_point", None),
    ("gtm without the PSF", ["--pvc", "gtm"], "psf_fwhm_mm", {"pvc": "gtm"}),
    ("PSF zero", ["--psf-fwhm-mm", "0"], "psf_fwhm_mm", None),  # 0 in the panel = not given
    ("PSF negative", ["--psf-fwhm-mm", "-2"], "psf_fwhm_mm", {"psfFwhmMm": -2.0}),
    ("reference-only VOIs without a registration", ["--vois", "reference-only"], "vois", {"voiMode": "reference-only"}),
    ("kernel file with local deposition", ["--kernel", "k.hdr", "--dose-method", "ldm"], "kernel_path",
     {"kernelFile": "k.hdr", "doseMethod": "ldm"}),
    ("kernel density zero", ["--kernel-density-g-ml", "0"], "kernel_density_g_ml", {"kernelDensityGMl": 0.0}),
    ("unknown VOI model", ["--voi-model", "Liver=quad"], "models_per_voi", {"voiModels": '{"Liver": "quad"}'}),
    ("VOI model without NAME=", ["--voi-model", "Liver"], "models_per_voi", {"voiModels": '["Liver"]'}),
    ("SPECT calibration zero", ["--spect-calibration", "0"], "spect_calibration_bq_per_ml_per_unit", None),
    ("SPECT calibration infinite", ["--spect-calibration", "inf"], "spect_calibration_bq_per_ml_per_unit", None),
    ("negative syringe residual", ["--residual-activity-mbq", "-1"], "residual_activity_bq",
     {"residualActivityMBq": -1.0}),
    ("unknown fit error model", [], "fit_weighting", {"fitWeighting": "poisson"}),  # argparse knows the choices
    ("radiobiology not TYPE=AB:TREP", ["--radiobiology", "kidney=2.6"], "radiobiology",
     {"radiobiologyTissues": "liver=2.5:1.5, kidney=2.6"}),
    # inputs for a method the other options leave out: the run went without them, without a word
    ("blood samples without the blood-based marrow", ["--blood-samples", "b.csv"], "blood_samples",
     {"bloodSamples": "b.csv"}),
    ("RMBLR with the image-based marrow", ["--rmblr", "0.8", "--marrow-method", "image"], "rmblr",
     {"rmblr": 0.8, "marrowMethod": "image"}),
    ("population kinetics without nlmm", ["--population", "p.json"], "population", {"populationFile": "p.json"}),
    ("planar calibration with the planar images left out", ["--planar-calibration-cps-per-mbq", "9", "--no-planar"],
     "planar_calibration_cps_per_mbq", {"planarCalibrationCpsPerMBq": 9.0, "usePlanar": False}),
    ("radiobiology alpha/beta zero", ["--radiobiology", "kidney=0:2.8"], "radiobiology",
     {"radiobiologyTissues": "kidney=0:2.8"}),
    ("an earlier cycle's kinetics on all time points", ["--kinetics-from", "c1.json"], "time_points",
     {"kineticsFrom": "c1.json"}),
]


@pytest.mark.parametrize("argv, name, panel", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_bad_run_options_are_refused_naming_the_option(argv, name, panel, tmp_path, capsys):
    flag = options.option(name, "run").flag
    if not argv:  # the panel's value only
        with pytest.raises(OptionError) as refused_in_panel:
            _panel_options(**panel)
        assert refused_in_panel.value.option == name
        return
    with pytest.raises(OptionError) as refused:
        _cli_options(argv)
    assert refused.value.option == name
    assert flag in refused.value.describe(options.cli_flag)
    if panel is not None:
        with pytest.raises(OptionError) as refused_in_panel:
            _panel_options(**panel)
        assert refused_in_panel.value.option == name

    # The command line: exit 2, one line naming the --flag, before the (missing) study is looked at.
    study, out = tmp_path / "no-such-study", tmp_path / "out"
    assert cli.main(["run", str(study), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ludosimetry: error: ") and flag in err[0], err
    assert study.name not in err[0]
    assert not out.exists()


def test_choices_are_refused_by_both_front_ends(tmp_path, capsys):
    with pytest.raises(OptionError) as refused:
        _panel_options(doseMethod="xyz")
    assert refused.value.option == "dose_method" and "dvk, ldm" in str(refused.value)
    with pytest.raises(SystemExit) as exit_:  # argparse knows the choices
        cli.main(["run", str(tmp_path / "no-such-study"), "--out", str(tmp_path / "out"), "--dose-method", "xyz"])
    assert exit_.value.code == 2 and "--dose-method" in capsys.readouterr().err
    with pytest.raises(OptionError) as refused:
        _panel_options("reconstruct", reconScatter="compton")
    assert refused.value.option == "scatter"


def test_an_output_folder_error_names_the_overwrite_flag(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}")
    assert cli.main(["run", str(tmp_path / "no-such-study"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "no-such-study" not in err


def test_inspect_checks_the_injection_before_scanning(tmp_path, capsys):
    assert cli.main(["inspect", str(tmp_path / "no-such-study"), "--injected-activity-mbq", "0"]) == 2
    err = capsys.readouterr().err
    assert "--injected-activity-mbq" in err and "no-such-study" not in err


REFUSED_RECON = [
    ("dual-energy window without k", ["--scatter", "dew"], "dew_k", {"reconScatter": "dew"}),
    ("dual-energy window with k zero", ["--scatter", "dew", "--dew-k", "0"], "dew_k", None),  # 0 = not given
    ("dead-time factor below one", ["--dead-time-factor", "0.9"], "dead_time_factor", {"reconDeadTimeFactor": 0.9}),
    ("no iterations", ["--iterations", "0"], "iterations", {"reconIterations": 0}),
    ("iterations not whole", ["--iterations", "2.5"], "iterations", None),
    ("no subsets", ["--subsets", "0"], "subsets", {"reconSubsets": 0}),
    ("calibration zero", ["--calibration-cps-per-mbq", "0"], "calibration_cps_per_mbq", None),
    ("calibration negative", ["--calibration-cps-per-mbq", "-1"], "calibration_cps_per_mbq", None),
]


@pytest.mark.parametrize("argv, name, panel", [c[1:] for c in REFUSED_RECON], ids=[c[0] for c in REFUSED_RECON])
def test_bad_recon_options_are_refused_naming_the_option(argv, name, panel, tmp_path, capsys):
    flag = options.option(name, "reconstruct").flag
    with pytest.raises(OptionError) as refused:
        _cli_options(argv, "reconstruct")
    assert refused.value.option == name
    if panel is not None:
        with pytest.raises(OptionError) as refused_in_panel:
            _panel_options("reconstruct", **panel)
        assert refused_in_panel.value.option == name
    study, out = tmp_path / "no-such-study", tmp_path / "recon"
    assert cli.main(["reconstruct", str(study), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and study.name not in err[0], err
    assert not out.exists()


def test_library_calls_validate_before_reading_the_study(tmp_path):
    from LuDosimetryLib.mrml.session import DosimetrySession
    from LuDosimetryLib.pipeline import run_study

    missing = tmp_path / "no-such-study"
    with pytest.raises(OptionError) as refused:
        run_study(missing, RunOptions(pvc="gtm"))
    assert refused.value.option == "psf_fwhm_mm"
    session = DosimetrySession()  # no scene: files only
    with pytest.raises(OptionError) as refused:
        session.run(missing, tmp_path / "out", RunOptions(), reference_time_point=-1)
    assert refused.value.option == "reference_time_point"
    with pytest.raises(OptionError) as refused:
        session.reconstruct(missing, tmp_path / "recon", ReconOptions(subsets=0))
    assert refused.value.option == "subsets"
    with pytest.raises(OptionError) as refused:
        options.replace_options(RunOptions(), vois="reference-only")
    assert refused.value.option == "vois"
    assert not (tmp_path / "out").exists() and not (tmp_path / "recon").exists()


# ------------------------------------------------------------------------------------ error messages

def test_errors_name_the_option_as_each_front_end_does():
    error = OptionError("must be > 0 mm, got -2 mm", option="psf_fwhm_mm")
    assert str(error) == "psf_fwhm_mm: must be > 0 mm, got -2 mm"
    assert error.describe(options.cli_flag) == "--psf-fwhm-mm: must be > 0 mm, got -2 mm"
    assert error.describe(lambda name: "'PSF FWHM'") == "'PSF FWHM': must be > 0 mm, got -2 mm"
    placed = OptionError("partial-volume correction 'gtm' needs the SPECT resolution: give {option}",
                         option="psf_fwhm_mm")
    assert placed.describe(options.cli_flag).endswith("give --psf-fwhm-mm")
    with_path = OutputError("output folder exists; allow {option} to replace it", "/data/out", option="overwrite")
    assert with_path.describe(options.cli_flag) == "/data/out: output folder exists; allow --overwrite to replace it"
    assert LuDosimetryError("plain").describe(options.cli_flag) == "plain"
    assert options.cli_flag("supersample") == "supersample"  # no flag: its library name
    assert options.cli_flag("no_such_option") == "no_such_option"
    assert options.cli_flag("reference_time_point") == "--reference-time-point"


# ------------------------------------------------------------------------------------ VOI model table

def test_voi_model_table_text():
    assert options.parse_voi_model_table("") == {} and options.parse_voi_model_table("  ") == {}
    text = options.format_voi_model_table({"Liver": "trapezoid", "Kidney_L": "auto", "Lésion 1": "bi"})
    assert list(options.parse_voi_model_table(text).items()) == [("Liver", "trapezoid"), ("Kidney_L", "auto"),
                                                                  ("Lésion 1", "bi")]
    assert options.format_voi_model_table({}) == ""
    with pytest.raises(ValueError, match="'Liver': model 'quad' is not one of auto, mono"):
        options.parse_voi_model_table('{"Liver": "quad"}')
    for bad in ('["Liver"]', "Liver=mono", "{"):
        with pytest.raises(ValueError, match="not a JSON object"):
            options.parse_voi_model_table(bad)


def test_voi_model_table_follows_the_vois():
    text = options.format_voi_model_table({"Liver": "trapezoid", "Kidney_L": "bi", "Gone": "mono"})
    # New VOIs come in on auto, known ones keep their choice, vanished ones go; the order is the study's.
    merged = options.voi_model_table_with_names(text, ["Spleen", "Liver", "Kidney_L"])
    assert list(options.parse_voi_model_table(merged).items()) == [("Spleen", "auto"), ("Liver", "trapezoid"),
                                                                    ("Kidney_L", "bi")]
    assert options.parse_voi_model_table(options.voi_model_table_with_names("garbage", ["A"])) == {"A": "auto"}
    assert options.voi_model_table_with_names(text, []) == ""


def test_model_choices_are_models_of_the_library():
    from LuDosimetryLib.kinetics import MODELS
    from LuDosimetryLib.kinetics import reduced

    assert [choice for choice, _ in options.MODEL_CHOICES] == ["auto", "mono", "bi", "tri", "trapezoid"]
    assert dict(options.MODEL_CHOICES)["auto"] is None
    for choice, models in options.MODEL_CHOICES[1:]:
        assert models and set(models) <= set(MODELS), choice
    assert set(RunOptions().models) <= set(MODELS)
    assert set(options.REDUCED_METHODS) <= set(reduced.METHODS)
