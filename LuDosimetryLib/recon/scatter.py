"""Energy-window scatter estimates in the photopeak.

Triple energy window (TEW; Ogawa et al., IEEE Trans Med Imaging 1991;10:408-412):
S = (C_lower/w_lower + C_upper/w_upper) · w_peak / 2.
Dual energy window (DEW; Jaszczak et al., J Nucl Med 1984;25:893-900) with the adjacent lower window
only: S = C_lower/w_lower · w_peak / 2 (the TEW trapezoid with an empty upper window).
Both are smoothed per view with a Gaussian of ``sigma_px`` pixels to tame the noise of the narrow
windows, as is usual before using them as an additive term in OSEM.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from ..options import SCATTER_METHODS as METHODS
from .energy import EnergyWindow, WindowRoles


def energy_window_scatter(counts: np.ndarray, windows: Sequence[EnergyWindow], roles: WindowRoles,
                          method: str = "tew", sigma_px: float = 1.0) -> Optional[np.ndarray]:
    """Scatter estimate in the photopeak ``[view, row, col]`` (counts), or None for ``"none"``.

    Raises
    ------
    ValueError
        Unknown method, or the windows it needs are absent.
    """
    method = str(method).lower()
    if method not in METHODS:
        raise ValueError(f"scatter method must be one of {', '.join(METHODS)}, not {method!r}")
    if method == "none":
        return None
    wp = windows[roles.peak].width_kev
    if roles.lower is None:
        raise ValueError(f"{method.upper()} scatter needs a lower scatter window adjacent to the photopeak "
                         f"({windows[roles.peak].lower_kev:g} keV); none found")
    density = counts[roles.lower] / windows[roles.lower].width_kev
    if method == "tew":
        if roles.upper is None:
            raise ValueError("TEW scatter needs an upper scatter window adjacent to the photopeak "
                             f"({windows[roles.peak].upper_kev:g} keV); none found (use --scatter dew)")
        density = density + counts[roles.upper] / windows[roles.upper].width_kev
    scatter = density * wp / 2.0
    if sigma_px > 0:
        scatter = np.stack([gaussian_filter(v, sigma_px, mode="nearest") for v in scatter])
    return scatter.astype(np.float32)
