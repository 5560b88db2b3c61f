"""The stages of ``run_study``: the shared VOI-activity rule and the progress slices of each stage.

The VOI activity of a time point is computed by one function for the VOI time-activity curves (0/1
float32 weights) and for the region curves of the VOI-based TIA map (boolean regions). Each kind keeps
the arithmetic it had before the stages were split out, bit for bit; the formulas written out below are
those of the pipeline at commit bc938fb.
"""
from __future__ import annotations

import numpy as np
import pytest

from LuDosimetryLib.pipeline import RunOptions, _partition, _voi_activity_bq, run_study

from study_builder import build_study


def _bits(x: float) -> bytes:
    return np.float64(x).tobytes()


@pytest.fixture(scope="module")
def time_point():
    """A float32 image, nested VOIs (a lesion inside an organ) and their partition and GTM values."""
    rng = np.random.default_rng(7)
    shape = (18, 22, 26)
    image = rng.gamma(2.0, 3.0e4, size=shape).astype(np.float32)
    z, y, x = np.indices(shape)
    organ = ((z - 9) ** 2 / 49 + (y - 11) ** 2 / 64 + (x - 13) ** 2 / 100 <= 1).astype(np.float32)
    lesion = ((z - 8) ** 2 + (y - 12) ** 2 + (x - 15) ** 2 <= 6).astype(np.float32)
    other = ((z - 3) ** 2 + (y - 4) ** 2 + (x - 4) ** 2 <= 4).astype(np.float32)
    masks = {"Organ": organ, "Lesion": lesion, "Other": other}
    regions = _partition(masks)
    gtm = {"Organ": 8.1e4 / 3, "Lesion": 2.9e5 / 7, "Other": 1.3e4 / 11, "__background__": 310.0 / 3}
    return image, masks, regions, gtm, 4.7952 * 4.7952 * 4.7952 / 1000.0


def test_weights_reproduce_the_tac_formulas(time_point):
    image, masks, regions, gtm, vml = time_point
    for name, w in masks.items():
        plain = float(np.sum(w * image)) * vml
        inside = w > 0
        corrected = sum(gtm[n] * float(np.count_nonzero(regions[n] & inside)) for n in regions) * vml
        assert _bits(_voi_activity_bq(image, w, vml)) == _bits(plain), name
        assert _bits(_voi_activity_bq(image, w, vml, gtm=gtm, regions=regions)) == _bits(corrected), name


def test_regions_reproduce_the_tia_map_formulas(time_point):
    image, _, regions, gtm, vml = time_point
    for name, m in regions.items():
        plain = float(np.sum(image[m])) * vml
        corrected = gtm[name] * float(np.count_nonzero(m)) * vml
        assert _bits(_voi_activity_bq(image, m, vml)) == _bits(plain), name
        assert _bits(_voi_activity_bq(image, m, vml, gtm=gtm, regions={name: m})) == _bits(corrected), name


def test_both_kinds_are_one_rule(time_point):
    """A region measured as weights or as a boolean mask: the same activity (to float32 summation)."""
    image, _, regions, gtm, vml = time_point
    for name, m in regions.items():
        w = m.astype(np.float32)
        assert _voi_activity_bq(image, w, vml) == pytest.approx(_voi_activity_bq(image, m, vml), rel=1e-5)
        assert _voi_activity_bq(image, w, vml, gtm=gtm, regions=regions) == pytest.approx(
            _voi_activity_bq(image, m, vml, gtm=gtm, regions={name: m}), rel=1e-12)


def test_stages_report_into_their_slices(tmp_path):
    study = build_study(tmp_path / "study")
    calls = []
    run_study(study.root, RunOptions(dose_method="ldm", pvc="gtm", psf_fwhm_mm=10.0),
              progress=lambda f, m: calls.append((f, m)))
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions)
    assert calls[0] == (0.0, "reading study") and calls[-1] == (1.0, "done")
    slices = {"reading SPECT": (0.1, 0.25), "CT density": (0.25, 0.35), "VOIs of time point": (0.35, 0.45),
              "partial-volume correction": (0.6, 0.63), "fitting": (0.63, 0.68)}
    for prefix, (lo, hi) in slices.items():
        seen = [f for f, m in calls if m.startswith(prefix)]
        assert seen and all(lo <= f < hi for f in seen), prefix
    for fraction, message in ((0.68, "TIA map"), (0.75, "absorbed dose (ldm)"), (0.9, "DVH")):
        assert (fraction, message) in calls
