"""Lu-177 energy windows and their identification by range (not by position in the file)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

#: Lu-177 photopeak 208.4 keV ± 10 % and its adjacent scatter windows, as on Siemens Symbia/Intevo
#: Lu-177 protocols (photopeak 187.2-228.8 keV, lower 166.4-187.2 keV, upper 228.8-249.6 keV: each
#: side window 10 % of 208 keV wide, abutting the 20 % photopeak window; e.g. Ljungberg et al., MIRD
#: Pamphlet No. 26, J Nucl Med 2016;57:151-162, recommends a 20 % photopeak at 208 keV with adjacent
#: scatter windows for TEW).
LU177_WINDOWS_KEV = (("Lu177_208keV", 187.2, 228.8), ("Lu177_Scat_Low", 166.4, 187.2),
                     ("Lu177_Scat_High", 228.8, 249.6))
PEAK_KEV = 208.366


@dataclass
class EnergyWindow:
    """One acquired energy window."""

    name: str
    lower_kev: float
    upper_kev: float

    @property
    def width_kev(self) -> float:
        return self.upper_kev - self.lower_kev

    @property
    def centre_kev(self) -> float:
        return 0.5 * (self.lower_kev + self.upper_kev)


@dataclass
class WindowRoles:
    """Indices (into the file's window list) of the photopeak and its adjacent scatter windows."""

    peak: int
    lower: Optional[int]
    upper: Optional[int]


def identify_windows(windows: Sequence[EnergyWindow], peak_kev: float = PEAK_KEV,
                     tolerance_kev: float = 2.0) -> WindowRoles:
    """Find the photopeak window (contains ``peak_kev``; the narrowest if several) and the scatter
    windows adjacent to it (upper limit within ``tolerance_kev`` of the peak's lower limit, and the
    mirror for the upper window).

    Raises
    ------
    ValueError
        No window contains the photopeak energy.
    """
    containing = [i for i, w in enumerate(windows) if w.lower_kev <= peak_kev <= w.upper_kev]
    if not containing:
        ranges = ", ".join(f"{w.lower_kev:g}-{w.upper_kev:g}" for w in windows)
        raise ValueError(f"no energy window contains {peak_kev:g} keV (windows: {ranges} keV)")
    peak = min(containing, key=lambda i: (windows[i].width_kev, abs(windows[i].centre_kev - peak_kev)))
    p = windows[peak]

    def best(cands: List[Tuple[float, int]]) -> Optional[int]:
        return min(cands)[1] if cands else None

    lower = best([(abs(w.upper_kev - p.lower_kev), i) for i, w in enumerate(windows)
                  if i != peak and abs(w.upper_kev - p.lower_kev) <= tolerance_kev and w.lower_kev < p.lower_kev])
    upper = best([(abs(w.lower_kev - p.upper_kev), i) for i, w in enumerate(windows)
                  if i != peak and abs(w.lower_kev - p.upper_kev) <= tolerance_kev and w.upper_kev > p.upper_kev])
    return WindowRoles(peak, lower, upper)
