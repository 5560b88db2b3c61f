"""The files of a run's output folder, by name: written by :func:`LuDosimetryLib.report.write_outputs`, read
by the per-patient report (:mod:`LuDosimetryLib.patient_report`), which is rebuilt from these files alone."""
from __future__ import annotations

RESULTS_FILE = "results.json"
DVH_FILE = "dvh.csv"
VOI_RESULTS_FILE = "voi_results.csv"
RTDOSE_FILE = "rtdose.dcm"
DOSE_FILE = "dose_gy.nrrd"
TIA_FILE = "tia_bq_s_per_ml.nrrd"
REPORT_HTML_FILE = "report.html"
REPORT_PDF_FILE = "report.pdf"
#: Folder of the per-time-point images: each time point's SPECT (Bq/mL) and VOI masks, on its own grid.
TIME_POINTS_DIR = "time_points"


def time_point_spect_file(number: int) -> str:
    """The SPECT (Bq/mL at acquisition) of time point ``number`` (1-based), relative to the output folder."""
    return f"{TIME_POINTS_DIR}/tp{number}_spect_bq_per_ml.nrrd"


def time_point_masks_file(number: int) -> str:
    """The VOI masks (:mod:`LuDosimetryLib.io.voi_masks`) of time point ``number`` (1-based), as the run used
    them, relative to the output folder."""
    return f"{TIME_POINTS_DIR}/tp{number}_vois.nrrd"


#: Folder of the planar views (#14): each planar session's geometric-mean image and its VOI regions.
PLANAR_DIR = "planar"


def planar_image_file(number: int) -> str:
    """The attenuation-corrected geometric mean (Bq per pixel) of planar session ``number`` (1-based), a one-slice
    coronal volume (:func:`LuDosimetryLib.planar.projection.grid_image`), relative to the output folder."""
    return f"{PLANAR_DIR}/session{number}_geometric_mean_bq.nrrd"


def planar_regions_file(number: int) -> str:
    """The VOI regions the run used on planar session ``number`` (1-based), on its grid (a VOI mask file of
    :mod:`LuDosimetryLib.io.voi_masks`; ``--planar-regions`` reads it back), relative to the output folder."""
    return f"{PLANAR_DIR}/session{number}_regions.nrrd"
