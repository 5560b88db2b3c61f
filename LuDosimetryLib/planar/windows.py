"""The photopeak and scatter windows of a planar acquisition, and its primary counts by TEW.

Triple-energy-window scatter estimate (Ogawa K. et al., IEEE Trans Med Imaging 1991;10:408–412), the same
as the SPECT reconstruction's (:func:`LuDosimetryLib.recon.scatter.energy_window_scatter`): the scatter under
the photopeak is the trapezoid S = (C_lower/w_lower + C_upper/w_upper) · w_peak / 2 of the adjacent windows,
smoothed with a Gaussian (1 pixel) to tame the noise of the narrow windows. Windows are identified by their
energy range (:func:`LuDosimetryLib.recon.energy.identify_windows`), never by their position in the file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..recon.energy import PEAK_KEV, EnergyWindow, WindowRoles, identify_windows
from ..recon.scatter import energy_window_scatter


@dataclass
class ViewCounts:
    """One view's counts by window role: photopeak, lower and upper scatter windows (None when absent)."""

    peak: np.ndarray
    lower: Optional[np.ndarray]
    upper: Optional[np.ndarray]
    windows: List[EnergyWindow]  # peak, lower, upper (the absent ones omitted)


def split_windows(frames: Sequence, peak_kev: float = PEAK_KEV) -> Dict[str, ViewCounts]:
    """Counts of each view by window role.

    Parameters
    ----------
    frames : sequence of :class:`LuDosimetryLib.io.planar.PlanarFrame`

    Returns
    -------
    dict view → ViewCounts

    Raises
    ------
    ValueError
        A view without a window containing the photopeak, or with a window twice.
    """
    out: Dict[str, ViewCounts] = {}
    by_view: Dict[str, list] = {}
    for f in frames:
        by_view.setdefault(f.view, []).append(f)
    for view, fs in by_view.items():
        wins = [EnergyWindow(f.window_name, *f.window_kev) for f in fs]
        keys = [(w.lower_kev, w.upper_kev) for w in wins]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{view.lower()} view: an energy window appears twice")
        roles: WindowRoles = identify_windows(wins, peak_kev)
        pick = [roles.peak] + [i for i in (roles.lower, roles.upper) if i is not None]
        out[view] = ViewCounts(peak=fs[roles.peak].counts,
                               lower=None if roles.lower is None else fs[roles.lower].counts,
                               upper=None if roles.upper is None else fs[roles.upper].counts,
                               windows=[wins[i] for i in pick])
    return out


def tew_primary(view: ViewCounts) -> np.ndarray:
    """Primary photopeak counts: photopeak less the TEW scatter (not clipped: sums stay unbiased).

    A missing upper window counts as 0 (the upper window of Lu-177 holds little; the caller names it), a missing
    lower window gives no correction (the caller names it).
    """
    if view.lower is None:
        return np.asarray(view.peak, dtype=np.float64)
    peak_w, lower_w = view.windows[0], view.windows[1]
    if view.upper is None:
        upper_w = EnergyWindow("upper (absent, 0 counts)", peak_w.upper_kev, peak_w.upper_kev + lower_w.width_kev)
        upper = np.zeros_like(view.peak, dtype=np.float64)
    else:
        upper_w, upper = view.windows[2], view.upper
    counts = np.stack([np.asarray(c, dtype=np.float64)[None] for c in (view.peak, view.lower, upper)])
    scatter = energy_window_scatter(counts, [peak_w, lower_w, upper_w], WindowRoles(0, 1, 2), method="tew")
    return np.asarray(view.peak, dtype=np.float64) - scatter[0].astype(np.float64)
