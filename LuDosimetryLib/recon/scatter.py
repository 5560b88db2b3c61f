"""Energy-window scatter estimates in the photopeak.

Triple energy window (TEW; Ogawa K. et al., "A practical method for position-dependent Compton-scatter
correction in single photon emission CT", IEEE Trans Med Imaging 10(3):408-412, 1991):
S = (C_lower/w_lower + C_upper/w_upper) · w_peak / 2 (a trapezoid under the photopeak).

Dual energy window (DEW; Jaszczak R.J., Greer K.L., Floyd C.E. Jr, Harris C.C., Coleman R.E.,
"Improved SPECT quantification using compensation for scattered photons", J Nucl Med 25(8):893-900,
1984): S = k · C_lower, the counts of the scatter window below the photopeak times a multiplier k.
k depends on the radionuclide, the window settings, the camera and the object (Jaszczak et al. found
k = 0.5 for Tc-99m with a 127-153 keV photopeak and a 92-125 keV scatter window); no value is
established for Lu-177 with the windows of a given camera, so LuDosimetry has none: k is a required
option (``--dew-k``), to be taken from a phantom measurement or a publication for the windows used.

Both are smoothed per view with a Gaussian of ``sigma_px`` pixels to tame the noise of the narrow
windows, as is usual before using them as an additive term in OSEM.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from ..errors import OptionError
from ..options import SCATTER_METHODS as METHODS
from .energy import EnergyWindow, WindowRoles


def energy_window_scatter(counts: np.ndarray, windows: Sequence[EnergyWindow], roles: WindowRoles,
                          method: str = "tew", sigma_px: float = 1.0,
                          dew_k: Optional[float] = None) -> Optional[np.ndarray]:
    """Scatter estimate in the photopeak ``[view, row, col]`` (counts), or None for ``"none"``.

    Parameters
    ----------
    counts : ndarray [window, view, row, col]
        Counts of every energy window.
    windows, roles
        The energy windows and which is the photopeak / lower / upper scatter window.
    method : {"tew", "dew", "none"}
    sigma_px : float
        Gaussian smoothing per view (pixels); 0 for none.
    dew_k : float, optional
        DEW multiplier k (dimensionless, > 0); required for ``"dew"``.

    Raises
    ------
    ValueError
        Unknown method, or the windows it needs are absent.
    OptionError
        ``"dew"`` without a positive, finite ``dew_k`` (option ``dew_k``).
    """
    method = str(method).lower()
    if method not in METHODS:
        raise ValueError(f"scatter method must be one of {', '.join(METHODS)}, not {method!r}")
    if method == "none":
        return None
    if method == "dew" and not (dew_k is not None and np.isfinite(dew_k) and dew_k > 0):
        raise OptionError("DEW scatter (Jaszczak 1984: scatter = k x lower-window counts) needs the multiplier "
                          "k for these windows and this radionuclide: give {option} (no value is established "
                          "for Lu-177)", option="dew_k")
    if roles.lower is None:
        raise ValueError(f"{method.upper()} scatter needs a lower scatter window adjacent to the photopeak "
                         f"({windows[roles.peak].lower_kev:g} keV); none found")
    lower = counts[roles.lower]
    if method == "dew":
        scatter = float(dew_k) * lower
    else:
        if roles.upper is None:
            raise ValueError("TEW scatter needs an upper scatter window adjacent to the photopeak "
                             f"({windows[roles.peak].upper_kev:g} keV); none found (use --scatter dew with "
                             "--dew-k)")
        density = lower / windows[roles.lower].width_kev + counts[roles.upper] / windows[roles.upper].width_kev
        scatter = density * windows[roles.peak].width_kev / 2.0
    if sigma_px > 0:
        scatter = np.stack([gaussian_filter(v, sigma_px, mode="nearest") for v in scatter])
    return scatter.astype(np.float32)
