import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from LuDosimetryLib.errors import LuDosimetryError
from LuDosimetryLib.pvc import BACKGROUND, FWHM_TO_SIGMA, gtm_concentrations


def _ball(shape, centre, r):
    z, y, x = np.indices(shape)
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= r * r


def test_gtm_recovers_uniform_regions_blurred_by_the_same_psf():
    shape = (40, 40, 40)
    spacing = (4.0, 4.0, 4.0)
    small = _ball(shape, (20, 20, 12), 3)      # ≈ 7 mL lesion
    big = _ball(shape, (20, 20, 26), 8) & ~small
    truth = np.zeros(shape)
    truth[small] = 1000.0
    truth[big] = 200.0
    truth[~(small | big)] = 10.0
    fwhm = 10.0
    blurred = gaussian_filter(truth, fwhm * FWHM_TO_SIGMA / 4.0, mode="constant")
    raw_small = blurred[small].mean()
    assert raw_small < 0.7 * 1000.0  # strong partial-volume loss without correction
    conc = gtm_concentrations(blurred, {"lesion": small, "organ": big}, spacing, fwhm)
    assert conc["lesion"] == pytest.approx(1000.0, rel=0.02)
    assert conc["organ"] == pytest.approx(200.0, rel=0.02)
    assert conc[BACKGROUND] == pytest.approx(10.0, rel=0.05)


def test_gtm_with_a_mismatched_psf_is_still_much_better_than_none():
    shape = (40, 40, 40)
    small = _ball(shape, (20, 20, 20), 3)
    truth = np.where(small, 1000.0, 5.0)
    # the "scanner" blurs with 11 mm, we assume 10 mm
    blurred = gaussian_filter(truth, 11.0 * FWHM_TO_SIGMA / 4.0, mode="constant")
    conc = gtm_concentrations(blurred, {"lesion": small}, (4.0, 4.0, 4.0), 10.0)
    assert abs(conc["lesion"] / 1000.0 - 1) < 0.15
    assert abs(blurred[small].mean() / 1000.0 - 1) > 0.3


def test_gtm_bad_input():
    a = np.zeros((5, 5, 5), bool)
    a[1:3] = True
    with pytest.raises(LuDosimetryError, match="overlap"):
        gtm_concentrations(np.ones((5, 5, 5)), {"a": a, "b": a}, (1, 1, 1), 3.0)
    with pytest.raises(LuDosimetryError, match="FWHM"):
        gtm_concentrations(np.ones((5, 5, 5)), {"a": a}, (1, 1, 1), 0.0)
