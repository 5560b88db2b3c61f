"""Turn :class:`~LuDosimetryLib.pipeline.StudyResults` into files: results.json, dvh.csv/png, tac.png,
NRRD maps, each time point's SPECT and VOI masks, a standalone DICOM RT Dose and the per-patient report
(report.html, report.pdf; built from the folder's files alone) — all inside one atomically renamed folder.
File names: :mod:`LuDosimetryLib.output_layout`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .io.export import atomic_output_dir, check_output_outside_inputs, write_json
from .output_layout import (DOSE_FILE, DVH_FILE, REPORT_HTML_FILE, REPORT_PDF_FILE, RESULTS_FILE, RTDOSE_FILE,
                            TIA_FILE, VOI_RESULTS_FILE, time_point_masks_file, time_point_spect_file)
from .result_tables import voi_results_csv_text

#: The files of a run's output folder that the Slicer panel exports (:data:`RESULTS_FILE`, :data:`DVH_FILE`,
#: :data:`VOI_RESULTS_FILE`, :data:`RTDOSE_FILE`, :data:`REPORT_HTML_FILE`, :data:`REPORT_PDF_FILE`) are named
#: in :mod:`LuDosimetryLib.output_layout` and re-exported here.
__all__ = ["RESULTS_FILE", "DVH_FILE", "VOI_RESULTS_FILE", "RTDOSE_FILE", "REPORT_HTML_FILE", "REPORT_PDF_FILE",
           "plot_tacs", "write_outputs", "write_time_points"]


def plot_tacs(path, results) -> Path:
    """Measured activities (points) and fitted curves per VOI, activity (MBq) vs time (h)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    hours = np.array([t.hours_post_injection for t in results.time_points])
    tmax = max(float(hours.max()) * 1.15, 24.0)
    t = np.linspace(0.0, tmax, 400)
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=110)
    for i, (name, v) in enumerate(results.vois.items()):
        color = f"C{i % 10}"
        ax.plot(hours, np.array(v.activity_bq) / 1e6, "o", color=color)
        fit = results.fits.get(name)
        if fit is not None:
            ax.plot(t, np.asarray(fit.evaluate(t)) / 1e6, "-", color=color,
                    label=f"{name} ({v.fit_model}, T_eff {v.effective_half_life_h:.0f} h)"
                    if v.effective_half_life_h else f"{name} ({v.fit_model})")
    ax.set_xlabel("Time after injection (h)")
    ax.set_ylabel("Activity in VOI (MBq)")
    ax.set_yscale("log")
    ax.set_title(f"Time-activity curves — {results.patient_id}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path))
    plt.close(fig)
    return Path(path)


def write_outputs(results, out_dir, overwrite: bool = False) -> Path:
    """Write every output of a run into ``out_dir`` atomically.

    Files: ``results.json``, ``voi_results.csv`` (the panel's results table), ``dvh.csv``, ``dvh.png``,
    ``tac.png``, ``dose_gy.nrrd``,
    ``tia_bq_s_per_ml.nrrd``, ``rtdose.dcm`` (DoseUnits GY, SPECT grid, the study's frame of reference),
    ``time_points/`` (each time point's SPECT and VOI masks, :func:`write_time_points`), ``report.html`` and
    ``report.pdf`` (:mod:`LuDosimetryLib.patient_report`, from the files above),
    and with a registration ``registration/tp<k>_to_tp<ref>/`` (ITK .tfm, displacement field .nrrd, JSON).
    """
    from .dvh import plot_dvh, write_dvh_csv
    from .io.dicom_common import PatientInfo, StudyInfo
    from .io.planar import write_planar_views
    from .io.rtdose import write_rtdose
    from .patient_report import report_files

    check_output_outside_inputs(out_dir, [(results.inputs or {}).get("root"),
                                          *(getattr(results.options, "extra_study_dirs", None) or ())])
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        write_json(tmp / RESULTS_FILE, results.to_json())
        (tmp / VOI_RESULTS_FILE).write_text(voi_results_csv_text(results.vois), encoding="utf-8")
        write_dvh_csv(tmp / DVH_FILE, results.dvhs)
        plot_dvh(tmp / "dvh.png", results.dvhs, title=f"Cumulative DVH — {results.patient_id}")
        plot_tacs(tmp / "tac.png", results)
        sitk.WriteImage(results.dose_gy, str(tmp / DOSE_FILE), True)
        sitk.WriteImage(results.tia_bq_s_per_ml, str(tmp / TIA_FILE), True)
        write_time_points(tmp, results)
        write_planar_views(tmp, getattr(results, "planar_views", None))  # planar/ (#14): the panel's planar view
        patient = PatientInfo(patient_id=results.patient_id, patient_name=results.patient_name or results.patient_id)
        study = StudyInfo(study_instance_uid=results.study_instance_uid or StudyInfo().study_instance_uid,
                          study_datetime=results.time_points[0].acquisition_time)
        for i, reg in sorted(results.registrations.items()):
            reg.save(tmp / "registration" / f"tp{i + 1}_to_tp{results.reference_index + 1}")
        write_rtdose(tmp / RTDOSE_FILE, results.dose_gy, patient, study,
                     frame_of_reference_uid=results.frame_of_reference_uid,
                     series_description=f"LuDosimetry absorbed dose ({results.dose_method.upper()})",
                     comment=f"Lu-177 absorbed dose, {results.dose_method.upper()}, LuDosimetry",
                     # 16-bit: validates with the dicom3tools dciodvfy in Debian (it aborts on 32-bit RT Dose);
                     # precision max/65535, e.g. 0.4 mGy for a 25 Gy maximum.
                     bits_allocated=16)
        for name, data in report_files(tmp, shown_as=out_dir).items():  # the report reads only the files written above
            (tmp / name).write_bytes(data)
    return Path(out_dir)


def write_time_points(folder, results) -> None:
    """Each time point's SPECT (Bq/mL at acquisition, float32) and the VOI masks the run used on it (bit-packed,
    :mod:`LuDosimetryLib.io.voi_masks`), on the time point's own grid, into ``folder/time_points/``: the
    report's per-time-point images with VOI outlines are drawn from them."""
    from .io.voi_masks import write_voi_masks

    folder = Path(folder)
    for tp, image, masks in zip(results.time_points, results.time_point_images, results.time_point_masks):
        spect = folder / time_point_spect_file(tp.index + 1)
        spect.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.Cast(image, sitk.sitkFloat32), str(spect), True)
        write_voi_masks(folder / time_point_masks_file(tp.index + 1), masks, image)
