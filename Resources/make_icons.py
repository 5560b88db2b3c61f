"""Draw the LuDosimetry icons (128 x 128 PNG): isodose levels of two hot spots over "Lu-177".

Run once from the repository root after changing the design; the PNGs are committed::

    python Resources/make_icons.py
"""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TARGETS = (ROOT / "Resources" / "LuDosimetry.png",
           ROOT / "LuDosimetry" / "Resources" / "Icons" / "LuDosimetry.png")


def draw_icon(path: Path) -> None:
    """Write the 128 x 128 RGBA icon to ``path``."""
    fig = plt.figure(figsize=(1.28, 1.28), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    fig.patch.set_alpha(0)
    ax.add_patch(FancyBboxPatch((0.04, 0.04), 0.92, 0.92, boxstyle="round,pad=0,rounding_size=0.16",
                                facecolor="#1b2838", edgecolor="none"))
    y, x = np.mgrid[0:1:400j, 0:1:400j]
    dose = (np.exp(-((x - 0.42) ** 2 + (y - 0.60) ** 2) / (2 * 0.13 ** 2))
            + 0.7 * np.exp(-((x - 0.68) ** 2 + (y - 0.50) ** 2) / (2 * 0.09 ** 2)))
    dose /= dose.max()
    levels = [0.15, 0.3, 0.5, 0.7, 0.9, 1.01]
    ax.contourf(x, y, dose, levels=levels, cmap="inferno", vmin=-0.1, vmax=1.0)
    ax.contour(x, y, dose, levels=levels[:-1], colors="white", linewidths=0.5, alpha=0.6)
    ax.text(0.5, 0.13, "Lu-177", color="white", ha="center", va="center",
            fontsize=12, fontweight="bold", family="DejaVu Sans")
    fig.savefig(path, dpi=100, transparent=True)
    plt.close(fig)


if __name__ == "__main__":
    for target in TARGETS:
        target.parent.mkdir(parents=True, exist_ok=True)
        draw_icon(target)
        print(target)
