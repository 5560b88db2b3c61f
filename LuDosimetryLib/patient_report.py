"""The per-patient dosimetry report: ``report.html`` (self-contained) and ``report.pdf``, built from a run's
output folder alone.

What it holds follows the EANM guidance on dosimetry reporting (Lassmann et al., "EANM Dosimetry Committee
guidance document: good practice of clinical dosimetry reporting", EJNMMI 2011;38:192–200): patient and
study identity; the administration (activity, time, radionuclide); the series used (UIDs); per time point
an image with the VOI outlines; the time-activity curves with the fitted curves and their residuals; the
per-VOI table (volume, mass, TIA, TIAC, model, effective half-life, mean dose, D2/D50/D98, Gy/GBq and,
when the run computed them, uncertainty, BED and EQD2); the DVHs; a dose map with isodose lines; every
warning and named assumption; the provenance (software versions, every option, input series and the
SHA-256 of every input file); and a sign-off block.

Everything is read from the folder's files (:mod:`LuDosimetryLib.output_layout`: ``results.json``,
``dvh.csv``, ``dose_gy.nrrd``, each time point's SPECT and VOI masks), never from a run in memory, so
``ludosimetry report FOLDER`` rebuilds the very same document from a folder, and an older folder gives
what it has (a section whose files are missing says so).

One content model (:func:`report_blocks`: headings, key–value lists, tables, figures, lists) is rendered
twice: as HTML (CSS inline, figures as base64 PNG; opens offline) and as PDF.

PDF route: **matplotlib** (``Figure.savefig`` into a PDF, :class:`~matplotlib.backends.backend_pdf.PdfPages`).
Chosen for install weight and reach over fidelity to the HTML:

- Chromium print-to-PDF would print the HTML itself (best fidelity), but needs a ~300 MB browser that
  Slicer does not ship and a headless process to manage;
- WeasyPrint renders CSS paged media well, but needs Pango/HarfBuzz system libraries (a GTK runtime on
  Windows) that Slicer's Python does not have;
- matplotlib is already a dependency (every plot of the library), is pure Python with its own fonts
  (DejaVu, embedded as TrueType), and runs wherever the library runs, the Slicer module included. The PDF's
  figures are drawn by the same functions as the HTML's (vector line art and text), and its text and
  tables by the small flow layout below (A4 pages, numbered). It is plainer than the HTML (no CSS), with
  the same content.

No Qt; matplotlib through its Agg/PDF canvases only (no pyplot state).
"""
from __future__ import annotations

import base64
import csv
import html as html_lib
import io
import json
import math
import textwrap
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import OutputError, StudyError
from .io.results_json import read_results_json
from .output_layout import (DOSE_FILE, DVH_FILE, REPORT_HTML_FILE, REPORT_PDF_FILE, RESULTS_FILE,
                            time_point_masks_file, time_point_spect_file)

#: Shown for a value a run did not record (e.g. BED before radiobiology existed).
MISSING = "—"
#: A4 portrait (inches).
A4_IN = (8.27, 11.69)
#: VOIs per page of time-activity curves in the PDF, time points per page of images.
TACS_PER_PAGE = 12
TIME_POINTS_PER_PAGE = 4


# ----------------------------------------------------------------------------------- the folder's files

@dataclass
class Volume:
    """An image read from the folder, as an array (z, y, x) in LPS order: x towards the patient's left,
    y posterior, z superior (the index grows along each axis).

    Attributes
    ----------
    array : ndarray (z, y, x)
    spacing_mm : (float, float, float)
        Voxel size along x, y, z (mm).
    """

    array: np.ndarray
    spacing_mm: Tuple[float, float, float]


@dataclass
class RunFolder:
    """What the report reads from a run's output folder (None or empty where a file is missing).

    Attributes
    ----------
    path : Path
    results : dict
        ``results.json``.
    dvhs : dict name → (dose Gy, volume %) arrays
        ``dvh.csv``.
    dose : Volume or None
        ``dose_gy.nrrd`` (Gy, on the reference time point's grid).
    spects : list of Volume or None
        Each time point's SPECT (Bq/mL), in the order of ``results["time_points"]``.
    masks : list of dict name → bool ndarray, or None
        Each time point's VOI masks, on its SPECT's grid.
    """

    path: Path
    results: dict
    dvhs: Dict[str, Tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    dose: Optional[Volume] = None
    spects: List[Optional[Volume]] = field(default_factory=list)
    masks: List[Optional[Dict[str, np.ndarray]]] = field(default_factory=list)

    @property
    def voi_names(self) -> List[str]:
        return list(self.results.get("vois", {}))

    @property
    def reference(self) -> int:
        """The reference time point (0-based)."""
        return int(self.results.get("reference_time_point", 1)) - 1


def lps_array(array: np.ndarray, image) -> Volume:
    """``array`` (z, y, x) of a SimpleITK ``image`` reordered and flipped to LPS (:class:`Volume`).

    Each index axis is taken along the patient axis its direction cosine is closest to (exact for the
    axis-aligned grids of SPECT and CT; an oblique grid is shown as its nearest axis-aligned view).
    """
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)  # columns: index axes i, j, k
    spacing = image.GetSpacing()
    physical = [int(np.argmax(np.abs(direction[:, a]))) for a in range(3)]
    if sorted(physical) != [0, 1, 2]:  # degenerate: keep the index order
        physical = [0, 1, 2]
    # numpy axis n holds index axis 2 - n; it goes to numpy axis 2 - physical[2 - n]
    order = [0, 0, 0]
    for n in range(3):
        order[2 - physical[2 - n]] = n
    out = np.transpose(array, order)
    for a in range(3):
        if direction[physical[a], a] < 0:
            out = np.flip(out, axis=2 - physical[a])
    new_spacing = [0.0, 0.0, 0.0]
    for a in range(3):
        new_spacing[physical[a]] = float(spacing[a])
    return Volume(np.ascontiguousarray(out), (new_spacing[0], new_spacing[1], new_spacing[2]))


def _read_volume(path: Path) -> Optional[Volume]:
    import SimpleITK as sitk

    if not path.is_file():
        return None
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise StudyError("cannot be read as an image (damaged?); the report needs it", path) from None
    return lps_array(sitk.GetArrayFromImage(image).astype(np.float32), image)


def _read_masks(path: Path) -> Optional[Dict[str, np.ndarray]]:
    from .io.voi_masks import read_voi_masks

    if not path.is_file():
        return None
    masks, grid = read_voi_masks(path)
    return {name: lps_array(m, grid).array for name, m in masks.items()}


def _read_dvh_csv(path: Path) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    if not path.is_file():
        return {}
    rows: Dict[str, List[Tuple[float, float]]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                rows.setdefault(row["voi"], []).append((float(row["dose_gy"]), float(row["volume_percent"])))
    except (OSError, KeyError, ValueError, UnicodeDecodeError) as exc:
        raise StudyError(f"cannot be read as a DVH table ({type(exc).__name__}: {exc})", path) from None
    return {name: (np.array([d for d, _ in pts]), np.array([v for _, v in pts])) for name, pts in rows.items()}


def read_run_folder(folder) -> RunFolder:
    """Read what the report needs from a run's output folder.

    Raises
    ------
    OutputError
        ``folder`` is not a folder.
    StudyError
        Its ``results.json`` is missing or is not the results of a run; a file it holds cannot be read.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise OutputError("is not a folder", folder)
    path = folder / RESULTS_FILE
    if not path.is_file():
        raise StudyError(f"is not the output folder of a LuDosimetry run (no {RESULTS_FILE})", folder)
    results = read_results_json(path, "the results.json")
    if not (isinstance(results.get("time_points"), list) and "injected_activity_bq" in results):
        raise StudyError("is not the results.json of a LuDosimetry run (no time points or injected activity)", path)
    run = RunFolder(folder, results, dvhs=_read_dvh_csv(folder / DVH_FILE), dose=_read_volume(folder / DOSE_FILE))
    for tp in results["time_points"]:
        number = int(tp.get("index", 0)) + 1
        run.spects.append(_read_volume(folder / time_point_spect_file(number)))
        run.masks.append(_read_masks(folder / time_point_masks_file(number)))
    return run


# ------------------------------------------------------------------------------------------- numbers

def finite_number(value) -> Optional[float]:
    """``value`` as a finite float; None when it is missing, not a number, NaN or infinite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def fmt(value, spec: str = ".2f", scale: float = 1.0) -> str:
    """``value × scale`` formatted with ``spec``; :data:`MISSING` for None, NaN or a non-number."""
    number = finite_number(value)
    return MISSING if number is None else format(number * scale, spec)


def _volume_text(value) -> str:
    number = finite_number(value)
    return MISSING if number is None else format(number, ".2f" if abs(number) < 10 else ".1f")


def _when(text) -> str:
    """An ISO 8601 time as 'YYYY-MM-DD HH:MM:SS'."""
    try:
        return datetime.fromisoformat(str(text)).isoformat(sep=" ")
    except ValueError:
        return str(text) if text else MISSING


def _voi_colors(names: Sequence[str]) -> Dict[str, tuple]:
    from matplotlib import colormaps
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


# -------------------------------------------------------------------------------------------- curves

def fitted_curve(voi: dict, hours_h: np.ndarray, activity_bq: np.ndarray
                 ) -> Optional[Callable[[np.ndarray], np.ndarray]]:
    """The fitted curve A(t) (Bq, t in h) of a VOI of ``results.json``, or None when its model is unknown.

    Parameters
    ----------
    voi : dict
        ``fit_model`` and ``fit_params`` (names of :mod:`LuDosimetryLib.kinetics.models`).
    hours_h, activity_bq : ndarray
        The time points the fit used and their activities (the knots of the trapezoid model, which starts
        linearly from (0, 0)).
    """
    from .kinetics.models import MODELS, TrapezoidKnots

    model = MODELS.get(str(voi.get("fit_model")))
    params = voi.get("fit_params") or {}
    if model is None:
        return None
    try:
        if model.name == "trapezoid":
            knots = TrapezoidKnots(hours_h, activity_bq, float(params["lambda_tail_per_h"]), "linear")
            return lambda t: model.evaluate(t, knots)
        values = np.array([float(params[name]) for name in model.param_names])
    except (KeyError, TypeError, ValueError):
        return None
    return lambda t: model.evaluate(t, values)


def _used_time_points(results: dict) -> List[int]:
    """0-based time points the fits used (all, or ``time_points_used`` of a reduced run)."""
    n = len(results["time_points"])
    used = results.get("time_points_used")
    return list(range(n)) if not used else [int(i) - 1 for i in used if 0 < int(i) <= n]


# ------------------------------------------------------------------------------------------- figures

Rect = Tuple[float, float, float, float]  # left, bottom, right, top (figure fraction)


def _no_data(ax, text: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, color="0.4", transform=ax.transAxes, wrap=True)


def _outline(ax, mask2d: np.ndarray, x_mm: np.ndarray, y_mm: np.ndarray, color, **kwargs) -> None:
    if mask2d.any() and not mask2d.all():
        ax.contour(x_mm, y_mm, mask2d.astype(np.float32), levels=[0.5], colors=[color], **kwargs)


def _centres(n: int, spacing: float) -> np.ndarray:
    return (np.arange(n) + 0.5) * spacing


def _axial_index(vol: Volume, masks: Optional[Dict[str, np.ndarray]]) -> int:
    """The axial slice with the most VOI voxels (the most activity without VOIs)."""
    union = None
    for m in (masks or {}).values():
        if m.shape == vol.array.shape:
            union = m.copy() if union is None else union | m
    if union is not None and union.any():
        return int(np.argmax(union.sum(axis=(1, 2))))
    return int(np.argmax(np.clip(vol.array, 0, None).sum(axis=(1, 2))))


def _show_axial(ax, plane: np.ndarray, vol: Volume, **kwargs):
    """An axial plane (y, x) of ``vol``: anterior up, the patient's left on the right (radiological)."""
    nz, ny, nx = vol.array.shape
    sx, sy, _ = vol.spacing_mm
    return ax.imshow(plane, extent=(0, nx * sx, ny * sy, 0), interpolation="nearest", **kwargs)


def _show_coronal(ax, plane: np.ndarray, vol: Volume, **kwargs):
    """A coronal plane (z, x) of ``vol``: superior up, the patient's left on the right."""
    nz, ny, nx = vol.array.shape
    sx, _, sz = vol.spacing_mm
    return ax.imshow(plane, extent=(0, nx * sx, 0, nz * sz), origin="lower", interpolation="nearest", **kwargs)


def draw_time_points(fig, run: RunFolder, indices: Sequence[int], rect: Rect) -> None:
    """Per time point: the axial slice with the most VOI voxels and the coronal maximum-intensity
    projection of the SPECT (Bq/mL), with the outlines of the VOIs the run used on that time point."""
    from matplotlib.lines import Line2D

    names = run.voi_names
    colors = _voi_colors(names)
    grid = fig.add_gridspec(len(indices), 2, left=rect[0], bottom=rect[1], right=rect[2], top=rect[3],
                            wspace=0.08, hspace=0.3)
    tps = run.results["time_points"]
    for row, i in enumerate(indices):
        tp = tps[i]
        vol, masks = run.spects[i], run.masks[i] or {}
        label = f"TP{i + 1}, {fmt(tp.get('hours_post_injection'), '.1f')} h p.i."
        ax_axial, ax_coronal = fig.add_subplot(grid[row, 0]), fig.add_subplot(grid[row, 1])
        if vol is None:
            for ax in (ax_axial, ax_coronal):
                _no_data(ax, f"{label}: the SPECT image is not in this output folder (an older output)")
            continue
        positive = vol.array[vol.array > 0]
        vmax = float(np.percentile(positive, 99.9)) if positive.size else 1.0
        nz, ny, nx = vol.array.shape
        sx, sy, sz = vol.spacing_mm
        z = _axial_index(vol, masks)
        _show_axial(ax_axial, vol.array[z], vol, cmap="gray_r", vmin=0, vmax=vmax)
        mip = vol.array.max(axis=1)
        vmax_mip = float(np.percentile(mip[mip > 0], 99.5)) if np.any(mip > 0) else 1.0
        _show_coronal(ax_coronal, mip, vol, cmap="gray_r", vmin=0, vmax=vmax_mip)
        for name in names:
            m = masks.get(name)
            if m is None or m.shape != vol.array.shape:
                continue
            _outline(ax_axial, m[z], _centres(nx, sx), _centres(ny, sy), colors[name], linewidths=0.9)
            _outline(ax_coronal, m.any(axis=1), _centres(nx, sx), _centres(nz, sz), colors[name], linewidths=0.9)
        ax_axial.set_title(f"{label} — axial slice {z + 1}/{nz} (window 0–{vmax / 1e3:.3g} kBq/mL)", fontsize=7)
        ax_coronal.set_title(f"{label} — coronal MIP (window 0–{vmax_mip / 1e3:.3g} kBq/mL)", fontsize=7)
        for ax in (ax_axial, ax_coronal):
            ax.set_xticks([])
            ax.set_yticks([])
        ax_axial.text(0.01, 0.02, "R", color="0.3", fontsize=7, transform=ax_axial.transAxes)
        ax_axial.text(0.97, 0.02, "L", color="0.3", fontsize=7, transform=ax_axial.transAxes)
    handles = [Line2D([], [], color=colors[n], label=n) for n in names]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False,
                   bbox_to_anchor=(0.5, max(rect[1] - 0.06, 0.0)))


def draw_tacs(fig, run: RunFolder, names: Sequence[str], rect: Rect) -> None:
    """Per VOI: the measured activities (filled: used by the fit; open: not used), the fitted curve, and
    below it the residuals (measured − fitted, % of fitted) at the time points used."""
    results = run.results
    tps = results["time_points"]
    hours = np.array([float(tp["hours_post_injection"]) for tp in tps])
    used = _used_time_points(results)
    t = np.linspace(0.0, max(float(hours.max()) * 1.2, 24.0), 300)
    colors = _voi_colors(run.voi_names)
    ncols = max(1, min(3, len(names)))
    nrows = max(1, math.ceil(len(names) / ncols))
    grid = fig.add_gridspec(nrows, ncols, left=rect[0], bottom=rect[1], right=rect[2], top=rect[3], hspace=0.45,
                            wspace=0.32)
    for k, name in enumerate(names):
        v = results["vois"][name]
        row, col = divmod(k, ncols)
        cell = grid[row, col].subgridspec(2, 1, height_ratios=[3, 1.1], hspace=0.08)
        ax = fig.add_subplot(cell[0])
        ax_res = fig.add_subplot(cell[1], sharex=ax)
        acts = np.array([np.nan if a is None else float(a) for a in v.get("activity_bq", [])] or [np.nan] * len(tps))
        color = colors[name]
        unused = [i for i in range(len(tps)) if i not in used]
        ax.plot(hours[used], acts[used] / 1e6, "o", color=color, ms=4)
        if unused:
            ax.plot(hours[unused], acts[unused] / 1e6, "o", mfc="none", color=color, ms=4)
        curve = fitted_curve(v, hours[used], acts[used])
        if curve is not None:
            ax.plot(t, np.asarray(curve(t)) / 1e6, "-", color=color, lw=1.2)
            fitted = np.asarray(curve(hours[used]), dtype=float)
            with np.errstate(divide="ignore", invalid="ignore"):
                residual = 100.0 * (acts[used] - fitted) / fitted
            ax_res.axhline(0.0, color="0.5", lw=0.6)
            ax_res.plot(hours[used], residual, "s", color=color, ms=3)
            finite = residual[np.isfinite(residual)]
            span = max(5.0, float(np.abs(finite).max()) * 1.3) if finite.size else 5.0
            ax_res.set_ylim(-span, span)
        else:
            ax_res.text(0.5, 0.5, f"no curve for model {v.get('fit_model')!r}", ha="center", va="center",
                        fontsize=6, transform=ax_res.transAxes)
        teff = finite_number(v.get("effective_half_life_h"))
        ax.set_title(f"{name}: {v.get('fit_model', MISSING)}" + (f", T_eff {teff:.1f} h" if teff else ""),
                     fontsize=7)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("MBq", fontsize=6)
        ax_res.set_ylabel("resid. %", fontsize=6)
        for a in (ax, ax_res):
            a.tick_params(labelsize=6)
            a.grid(True, alpha=0.3)
        ax.tick_params(labelbottom=False)
        ax_res.set_xlabel("time after injection (h)", fontsize=6)


def draw_dvhs(fig, run: RunFolder, rect: Rect) -> None:
    """Cumulative DVHs (volume % against dose) of every VOI, from ``dvh.csv``."""
    ax = fig.add_axes((rect[0], rect[1], rect[2] - rect[0], rect[3] - rect[1]))
    if not run.dvhs:
        _no_data(ax, f"no DVH ({DVH_FILE} is not in this output folder)")
        return
    colors = _voi_colors(run.voi_names)
    for name, (dose, volume_pct) in run.dvhs.items():
        ax.plot(dose, volume_pct, label=name, color=colors.get(name), lw=1.2)
    ax.set_xlabel("absorbed dose (Gy)", fontsize=8)
    ax.set_ylabel("volume (%)", fontsize=8)
    ax.set_xlim(left=0)
    ax.set_ylim(0, 105)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper right")


def isodose_levels_gy(max_dose_gy: float) -> List[float]:
    """About five round isodose levels (Gy) between 0 and the maximum dose."""
    from matplotlib.ticker import MaxNLocator

    if not max_dose_gy > 0:
        return []
    ticks = MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]).tick_values(0.0, max_dose_gy)
    return [float(v) for v in ticks if 0 < v < max_dose_gy]


def draw_dose_map(fig, run: RunFolder, rect: Rect) -> None:
    """Axial and coronal slices through the dose maximum: the absorbed dose (colour, over the reference
    SPECT in grey) with isodose lines (Gy) and the VOI outlines (white, dashed)."""
    width = rect[2] - rect[0]
    axes = [fig.add_axes((rect[0] + f * width, rect[1], 0.42 * width, rect[3] - rect[1])) for f in (0.0, 0.47)]
    dose = run.dose
    if dose is None:
        for ax in axes:
            _no_data(ax, f"no dose map ({DOSE_FILE} is not in this output folder)")
        return
    ref = run.reference
    spect = run.spects[ref] if 0 <= ref < len(run.spects) else None
    if spect is not None and spect.array.shape != dose.array.shape:
        spect = None
    masks = {n: m for n, m in ((run.masks[ref] if 0 <= ref < len(run.masks) else None) or {}).items()
             if m.shape == dose.array.shape}
    nz, ny, nx = dose.array.shape
    sx, sy, sz = dose.spacing_mm
    z, y, _ = np.unravel_index(int(np.argmax(dose.array)), dose.array.shape)
    dmax = float(dose.array.max())
    levels = isodose_levels_gy(dmax)

    def axial(a):
        return a[z]

    def coronal(a):
        return a[:, y, :]

    views = [(axes[0], axial, _show_axial, (_centres(nx, sx), _centres(ny, sy)), f"axial slice {z + 1}/{nz}"),
             (axes[1], coronal, _show_coronal, (_centres(nx, sx), _centres(nz, sz)), f"coronal slice {y + 1}/{ny}")]
    image = None
    for ax, cut, show, (x1, x2), title in views:
        plane = cut(dose.array)
        if spect is not None:
            background = cut(spect.array)
            positive = background[background > 0]
            show(ax, background, dose, cmap="gray_r", vmin=0, alpha=0.6,
                 vmax=float(np.percentile(positive, 99.5)) if positive.size else 1.0)
        image = show(ax, np.ma.masked_less(plane, 0.02 * dmax), dose, cmap="turbo", vmin=0, vmax=max(dmax, 1e-9),
                     alpha=0.75)
        inside = [v for v in levels if v < plane.max()]
        if inside:
            lines = ax.contour(x1, x2, plane, levels=inside, colors="k", linewidths=0.7)
            ax.clabel(lines, fmt=lambda v: f"{v:g} Gy", fontsize=6)
        for m in masks.values():
            _outline(ax, cut(m), x1, x2, "white", linewidths=0.6, linestyles="dashed")
        ax.set_title(f"{title} (dose maximum {dmax:.2f} Gy)", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(image, ax=axes, fraction=0.04, pad=0.02)
    bar.set_label("absorbed dose (Gy)", fontsize=7)
    bar.ax.tick_params(labelsize=6)


# --------------------------------------------------------------------------------- the content model

@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str
    style: str = "normal"  # normal, small, note


@dataclass
class KeyValues:
    pairs: List[Tuple[str, str]]


@dataclass
class Table:
    header: List[str]
    rows: List[List[str]]
    table_id: str = ""
    mono: bool = False
    collapsed: str = ""  # HTML: inside <details> with this summary
    html_only: bool = False  # long listings (every input file): the PDF gives a digest instead
    links: List[str] = field(default_factory=list)  # HTML: row i's cell link_column links to links[i] (if not "")
    link_column: int = 0


@dataclass
class Bullets:
    items: List[str]
    style: str = "normal"  # normal, warning


@dataclass
class FigureBlock:
    """A figure drawn by ``draw(fig, rect, part)`` for each part (one PDF page per part)."""

    key: str
    caption: str
    draw: Callable
    parts: List[object]
    html_size_in: Tuple[float, float]
    pdf_height_in: Callable[[object], float] = lambda part: 5.0


def _identity_blocks(res: dict, folder: Path) -> list:
    opts = res.get("options") or {}
    inputs = res.get("inputs") or {}
    gbq = float(res["injected_activity_bq"]) / 1e9
    activity = f"{gbq * 1e3:.1f} MBq ({gbq:.3f} GBq)"
    if finite_number(res.get("residual_activity_bq")) is not None:
        activity += (f", net of a syringe residual of {res['residual_activity_bq'] / 1e6:.1f} MBq (assayed "
                     f"{fmt(res.get('injected_activity_before_residual_bq'), '.1f', 1e-6)} MBq)")
    kernel = res.get("dose_kernel")
    method = str(res.get("dose_method", MISSING)).upper()
    if kernel:
        method += (f" (kernel: {kernel.get('source')}, voxel {' × '.join(f'{v:g}' for v in kernel['spacing_mm'])} mm, "
                   f"medium {kernel.get('density_g_ml')} g/mL)")
    used = res.get("time_points_used")
    return [
        Heading("Patient and study"),
        KeyValues([("Patient name", res.get("patient_name") or MISSING),
                   ("Patient ID", res.get("patient_id") or MISSING),
                   ("Study instance UID", res.get("study_instance_uid") or MISSING),
                   ("Frame of reference UID", res.get("frame_of_reference_uid") or MISSING),
                   ("Study folder", inputs.get("root") or MISSING)]),
        Heading("Administration and method"),
        KeyValues([("Radionuclide", str(opts.get("nuclide", "Lu-177"))),
                   ("Administered activity", activity),
                   ("Injection", _when(res.get("injection_time"))),
                   ("Absorbed dose", method),
                   ("Reference time point", f"TP{res.get('reference_time_point', 1)} (grid of the TIA and dose maps)"),
                   ("Time points fitted", "all" if not used else ", ".join(f"TP{i}" for i in used)
                    + f" (reduced imaging: {opts.get('reduced_method', MISSING)})"),
                   ("Registration", f"{opts.get('registration', MISSING)}" + (
                       f" (time points {', '.join(f'TP{i}' for i in res['registered'])} to the reference)"
                       if res.get("registered") else "")),
                   ("Partial-volume correction", str(opts.get("pvc", MISSING))
                    + (f" (PSF {opts['psf_fwhm_mm']:g} mm FWHM)" if finite_number(opts.get("psf_fwhm_mm")) else ""))]),
        Paragraph(f"Output folder: {folder}", "small"),
    ]


def _time_point_blocks(res: dict) -> list:
    used = set(_used_time_points(res))
    ref = int(res.get("reference_time_point", 1)) - 1
    rows = [[f"TP{i + 1}", _when(tp.get("acquisition_time")), fmt(tp.get("hours_post_injection"), ".2f"),
             "yes" if i in used else "no", "yes" if i == ref else "", str(tp.get("description", "")),
             str(tp.get("spect_series_uid", ""))] for i, tp in enumerate(res["time_points"])]
    blocks = [Heading("Time points"),
              Table(["TP", "Acquisition", "h p.i.", "Fitted", "Reference", "Description", "SPECT series UID"], rows)]
    series = (res.get("inputs") or {}).get("series")
    blocks.append(Heading("Series used"))
    if series:
        blocks.append(Table(["Role", "Modality", "TP", "Description", "Series instance UID", "Files"],
                            [[s["role"], s.get("modality", ""), MISSING if s.get("time_point") is None
                              else f"TP{s['time_point']}", s.get("description", ""), s["series_uid"],
                              str(len(s.get("files", [])))] for s in series]))
    else:
        blocks.append(Paragraph("The series read are not recorded in this output folder (written by an older "
                                "version); the SPECT series of each time point are listed above.", "note"))
    return blocks


#: Columns of the per-VOI table: header, key of results.json, format (a spec or a function of the value).
VOI_COLUMNS: Tuple[Tuple[str, str, object], ...] = (
    ("Volume (mL)", "volume_ml", _volume_text),
    ("Mass (g)", "mass_g", _volume_text),
    ("TIA (MBq·h)", "tia_bq_s", lambda v: fmt(v, ".1f", 1 / 3.6e9)),
    ("TIAC (h)", "tiac_h", ".3f"),
    ("Model", "fit_model", lambda v: str(v).replace("_exponential", "-exp") if v else MISSING),
    ("T_eff (h)", "effective_half_life_h", ".1f"),
    ("Mean dose (Gy)", "mean_dose_gy", ".2f"),
    ("D2 (Gy)", "d2_gy", ".2f"),
    ("D50 (Gy)", "d50_gy", ".2f"),
    ("D98 (Gy)", "d98_gy", ".2f"),
    ("Gy/GBq", "gy_per_gbq", ".3f"),
    ("u(TIA) (%)", "tia_uncertainty_pct", ".1f"),
    ("u(D) (%)", "mean_dose_uncertainty_pct", ".1f"),
    ("BED (Gy)", "bed_gy", ".2f"),
    ("EQD2 (Gy)", "eqd2_gy", ".2f"),
)


def voi_table(res: dict) -> Table:
    """The per-VOI table (:data:`VOI_COLUMNS`), :data:`MISSING` where results.json has no value."""
    rows = []
    for name, v in res["vois"].items():
        row = [name]
        for _, key, how in VOI_COLUMNS:
            value = v.get(key)
            row.append(how(value) if callable(how) else fmt(value, how))
        rows.append(row)
    return Table(["VOI"] + [c[0] for c in VOI_COLUMNS], rows, table_id="voi-table")


def _voi_blocks(res: dict) -> list:
    blocks = [Heading("Results per VOI"), voi_table(res),
              Paragraph("TIA: time-integrated activity from injection to infinity; TIAC = TIA / administered "
                        "activity; T_eff: effective half-life of the slowest phase; D2/D50/D98: minimum dose to "
                        "the hottest 2/50/98 % of the VOI; u: relative standard uncertainty (k = 1), all components; "
                        f"BED/EQD2: biologically effective dose and its 2-Gy-fraction equivalent. {MISSING}: not "
                        "computed by this run.", "small")]
    reduced = [(n, v) for n, v in res["vois"].items() if finite_number(v.get("tia_full_bq_s"))]
    if reduced:
        blocks += [Heading("Reduced imaging against all time points", 3),
                   Table(["VOI", "TIA reduced (MBq·h)", "TIA all time points (MBq·h)", "difference (%)"],
                         [[n, fmt(v.get("tia_bq_s"), ".1f", 1 / 3.6e9), fmt(v.get("tia_full_bq_s"), ".1f", 1 / 3.6e9),
                           fmt(v.get("reduced_relative_difference"), "+.1f", 100.0)] for n, v in reduced])]
    return blocks


#: Whole-body quantities of results.json (#14), in the order of the report's table.
WHOLE_BODY_KEYS = (("whole_body", "Whole body"), ("remainder_of_body", "Remainder of body"), ("red_marrow", "Red marrow"))


def _whole_body_blocks(res: dict) -> list:
    """Whole body, remainder of body (and red marrow) and the hybrid planar/SPECT TIAs, where the run has them."""
    present = [(key, label) for key, label in WHOLE_BODY_KEYS if isinstance(res.get(key), dict)]
    if not present:
        return []
    rows = [[label, str(res[key].get("method", MISSING)), fmt(res[key].get("tia_bq_s"), ".1f", 1 / 3.6e9),
             fmt(res[key].get("mass_g"), ".0f"), fmt(res[key].get("mean_dose_gy"), ".3f"),
             fmt(res[key].get("tia_uncertainty_pct", res[key].get("mean_dose_uncertainty_pct")), ".1f")]
            for key, label in present]
    blocks = [Heading("Whole body and remainder of body"),
              Table(["Region", "Method", "TIA (MBq·h)", "Mass (g)", "Mean dose (Gy)", "u (%)"], rows),
              Paragraph("Remainder of body = whole body less the VOIs. Mean doses here are those stated in "
                        "results.json for each region (whole body and remainder: electrons deposited locally, "
                        f"photons and cross-dose not included). {MISSING}: not computed.", "small")]
    notes = [n for key, _ in present for n in (res[key].get("limitations") or [])]
    if notes:
        blocks.append(Bullets(notes, "warning"))
    hybrid = [(n, v) for n, v in res["vois"].items() if finite_number(v.get("hybrid_tia_bq_s"))]
    if hybrid:
        k = ((res.get("whole_body") or {}).get("hybrid") or {}).get("spect_time_point", MISSING)
        blocks += [Heading(f"Hybrid planar/SPECT (amplitude from SPECT time point {k})", 3),
                   Table(["VOI", "TIA SPECT (MBq·h)", "TIA hybrid (MBq·h)", "difference (%)"],
                         [[n, fmt(v.get("tia_bq_s"), ".1f", 1 / 3.6e9), fmt(v.get("hybrid_tia_bq_s"), ".1f", 1 / 3.6e9),
                           fmt(v.get("hybrid_vs_spect_pct"), "+.1f")] for n, v in hybrid])]
    return blocks


def _red_marrow_blocks(res: dict) -> list:
    """Red marrow (#14): the dose's self and cross parts, each method's TIA, and what was assumed for it."""
    rm = res.get("red_marrow")
    if not isinstance(rm, dict) or rm.get("tia_bq_s") is None:
        return []
    rows = [[str(m.get("method")), fmt(m.get("tia_bq_s"), ".2f", 1 / 3.6e9), str(m.get("fit_model", MISSING))]
            for m in (rm.get("blood_based"), rm.get("image_based")) if isinstance(m, dict)]
    parts = (f"Mean dose {fmt(rm.get('mean_dose_gy'), '.3f')} Gy = self {fmt(rm.get('self_dose_gy'), '.3f')} Gy + "
             f"remainder of body {fmt(rm.get('cross_dose_remainder_gy'), '.3f')} Gy + VOIs "
             f"{fmt(rm.get('cross_dose_organs_gy'), '.3f')} Gy; red-marrow mass {fmt(rm.get('mass_g'), '.0f')} g "
             f"(ICRP 89, sex {rm.get('sex')} from {rm.get('sex_source')}). S-values: {rm.get('s_value_source', '')}.")
    blocks = [Heading("Red marrow", 3), Paragraph(parts, "small")]
    if rows:
        blocks.append(Table(["Method", "Red-marrow TIA (MBq·h)", "Fit"], rows))
    if rm.get("image_vs_blood_pct") is not None:
        blocks.append(Paragraph(f"Image-based vs blood-based TIA: {fmt(rm['image_vs_blood_pct'], '+.1f')} %.", "small"))
    if rm.get("notes"):
        blocks.append(Bullets(list(rm["notes"]), "warning"))
    return blocks


def _figure_blocks(run: RunFolder) -> list:
    n_tp = len(run.results["time_points"])
    names = run.voi_names
    tp_parts = [list(range(i, min(i + TIME_POINTS_PER_PAGE, n_tp))) for i in range(0, n_tp, TIME_POINTS_PER_PAGE)]
    tac_parts = [names[i:i + TACS_PER_PAGE] for i in range(0, len(names), TACS_PER_PAGE)] or [[]]
    tac_rows = max(1, math.ceil(len(names) / 3))
    missing = [f"TP{i + 1}" for i, vol in enumerate(run.spects) if vol is None]
    note = (f" The SPECT images of {', '.join(missing)} are not in this output folder (written by an older "
            "version): no image is shown for them.") if missing else ""
    return [
        Heading("Images per time point"),
        FigureBlock("time_points", "SPECT (Bq/mL) of each time point: the axial slice with the most VOI voxels "
                    "and the coronal maximum-intensity projection, with the outlines of the VOIs used on that "
                    "time point (radiological view: the patient's right on the left)." + note,
                    lambda fig, rect, part: draw_time_points(fig, run, part, rect), tp_parts,
                    (10.0, 0.6 + 2.6 * n_tp), lambda part: 0.6 + 2.3 * len(part)),
        Heading("Time-activity curves"),
        FigureBlock("tacs", "Activity in each VOI (points; open: not used by the fit) with the fitted curve, "
                    "and the residuals (measured − fitted, % of fitted) below.",
                    lambda fig, rect, part: draw_tacs(fig, run, part, rect), tac_parts, (10.0, 0.5 + 3.0 * tac_rows),
                    lambda part: 0.4 + 2.3 * max(1, math.ceil(len(part) / 3))),
        Heading("Dose-volume histograms"),
        FigureBlock("dvh", "Cumulative dose-volume histograms (from dvh.csv).",
                    lambda fig, rect, part: draw_dvhs(fig, run, rect), [None], (8.0, 4.5)),
        Heading("Absorbed dose map"),
        FigureBlock("dose", "Absorbed dose (Gy) through its maximum over the reference SPECT, with isodose lines "
                    "and the VOI outlines (dashed).",
                    lambda fig, rect, part: draw_dose_map(fig, run, rect), [None], (10.0, 4.8), lambda part: 3.8),
    ]


def _warning_blocks(res: dict) -> list:
    assumptions = res.get("assumptions") or []
    warnings = list(res.get("warnings") or [])
    fit_warnings = [f"{name}: {w}" for name, v in res["vois"].items() for w in (v.get("fit_warnings") or [])]
    blocks = [Heading("Warnings and assumptions"), Heading("Named assumptions", 3)]
    if assumptions:
        blocks.append(Table(["What", "Value used", "Source", "File"],
                            [[str(a.get("what", "")), str(a.get("value", "")), str(a.get("source", "")),
                              str(a.get("path") or "")] for a in assumptions]))
    else:
        blocks.append(Paragraph("None: every value came from the study or the options."))
    blocks.append(Heading("Warnings", 3))
    blocks.append(Bullets(warnings + fit_warnings, "warning") if warnings or fit_warnings else Paragraph("None."))
    return blocks


def _provenance_blocks(res: dict) -> list:
    from . import __version__
    from .provenance import series_digest

    software = res.get("software") or {}
    opts = res.get("options")
    inputs = res.get("inputs") or {}
    blocks = [Heading("Provenance"), Heading("Software", 3)]
    blocks.append(KeyValues([(k, str(v)) for k, v in software.items()] if software
                            else [("LuDosimetry", "version not recorded in this output folder")]))
    blocks.append(Paragraph(f"This report was built by LuDosimetry {__version__}.", "small"))
    blocks.append(Heading("Options of the run", 3))
    if opts:
        blocks.append(Table(["Option", "Value"], [[k, json.dumps(v, ensure_ascii=False)] for k, v in opts.items()]))
        blocks.append(Paragraph("Library names and units (activities in Bq, time point indices 0-based).", "small"))
    else:
        blocks.append(Paragraph("Not recorded in this output folder (written by an older version).", "note"))
    blocks.append(Heading("Input files", 3))
    series = inputs.get("series", [])
    rows = [[s["series_uid"], s["role"], f["path"], f["sha256"]] for s in series for f in s.get("files", [])]
    rows += [[MISSING, o["role"], o["path"], o["sha256"]] for o in inputs.get("other_files", [])]
    if rows:
        blocks.append(Paragraph(f"{len(rows)} files read, below {inputs.get('root', MISSING)}. Per series, the "
                                "SHA-256 of its sha256sum listing (one line '<sha256>  <path>' per file, sorted by "
                                "path; in the study folder: sha256sum FILES | LC_ALL=C sort -k2 | sha256sum); every "
                                "file's own SHA-256 is in results.json and in the HTML report.", "small"))
        digests = [[s["series_uid"], s["role"], str(len(s.get("files", []))), series_digest(s.get("files", []))]
                   for s in series]
        digests += [[MISSING, o["role"], "1", o["sha256"]] for o in inputs.get("other_files", [])]
        blocks.append(Table(["Series instance UID", "Role", "Files", "SHA-256 of the listing"], digests, mono=True))
        blocks.append(Table(["Series instance UID", "Role", "File", "SHA-256"], rows, mono=True,
                            collapsed=f"Every input file and its SHA-256 ({len(rows)} files)", html_only=True))
    else:
        blocks.append(Paragraph("Not recorded in this output folder (written by an older version).", "note"))
    return blocks


def report_blocks(run: RunFolder) -> list:
    """The report's content, in order (rendered by :func:`render_html` and :func:`render_pdf`)."""
    res = run.results
    nuclide = str((res.get("options") or {}).get("nuclide", "Lu-177"))
    blocks: list = [Heading(f"{nuclide} dosimetry report — {res.get('patient_name') or res.get('patient_id')}", 1),
                    Paragraph(f"Built {datetime.now().isoformat(sep=' ', timespec='seconds')} from the run's output "
                              "folder alone (results.json, dvh.csv, the NRRD maps and images); rebuild it with "
                              "'ludosimetry report FOLDER'.", "small")]
    blocks += _identity_blocks(res, run.path)
    blocks += _voi_blocks(res)
    blocks += _whole_body_blocks(res)
    blocks += _red_marrow_blocks(res)
    blocks += _time_point_blocks(res)
    blocks += _warning_blocks(res)
    blocks += _figure_blocks(run)
    blocks += _provenance_blocks(res)
    blocks += [Heading("Review"),
               KeyValues([("Checked by", "_" * 40), ("Date", "_" * 20), ("Signature", "_" * 40)])]
    return blocks


# ------------------------------------------------------------------------------------------------ HTML

_CSS = """
body { font-family: "DejaVu Sans", Arial, Helvetica, sans-serif; color: #111; margin: 24px auto; max-width: 1150px;
       font-size: 13px; line-height: 1.35; background: #fff; }
h1 { font-size: 22px; border-bottom: 2px solid #234; padding-bottom: 4px; }
h2 { font-size: 17px; margin-top: 26px; border-bottom: 1px solid #99a; color: #123; }
h3 { font-size: 14px; margin: 14px 0 4px; color: #234; }
table { border-collapse: collapse; margin: 6px 0 10px; }
th, td { border: 1px solid #bbc; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #e8ecf2; }
tr:nth-child(even) td { background: #f7f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.mono td { font-family: "DejaVu Sans Mono", monospace; font-size: 11px; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; margin: 6px 0; }
dt { font-weight: bold; } dd { margin: 0; }
p.small { font-size: 11px; color: #444; } p.note { color: #744; font-style: italic; }
ul.warning li { color: #7a3b00; }
figure { margin: 8px 0 16px; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 11px; color: #333; }
@page { size: A4; margin: 14mm; }
"""


def _is_number(text: str) -> bool:
    try:
        float(text.replace("+", "", 1))
    except ValueError:
        return False
    return True


def _html_table(block: Table) -> str:
    e = html_lib.escape
    head = "".join(f"<th>{e(h)}</th>" for h in block.header)
    body = "".join("<tr>" + "".join(
        f'<td><a href="{e(block.links[i])}">{e(c)}</a></td>' if k == block.link_column and i < len(block.links)
        and block.links[i] else f'<td class="num">{e(c)}</td>' if _is_number(c) else f"<td>{e(c)}</td>"
        for k, c in enumerate(row)) + "</tr>" for i, row in enumerate(block.rows))
    attrs = (f' id="{e(block.table_id)}"' if block.table_id else "") + (' class="mono"' if block.mono else "")
    table = f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f"<details><summary>{e(block.collapsed)}</summary>{table}</details>" if block.collapsed else table


def _png_base64(block: FigureBlock) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=block.html_size_in, dpi=100)
    FigureCanvasAgg(fig)
    width, height = block.html_size_in
    rect = (0.06, min(0.6 / height, 0.3), 0.97, 1.0 - 0.3 / height)
    whole = [item for part in block.parts for item in part] if isinstance(block.parts[0], list) else None
    block.draw(fig, rect, whole)  # the HTML shows every part in one figure
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def render_html(blocks: list, title: str) -> str:
    """A self-contained HTML document (CSS inline, figures as base64 PNG, no script, no external link)."""
    e = html_lib.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
           f"<style>{_CSS}</style></head><body>"]
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{e(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            out.append(f'<p class="{block.style}">{e(block.text)}</p>')
        elif isinstance(block, KeyValues):
            out.append("<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in block.pairs) + "</dl>")
        elif isinstance(block, Table):
            out.append(_html_table(block))
        elif isinstance(block, Bullets):
            out.append(f'<ul class="{block.style}">' + "".join(f"<li>{e(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, FigureBlock):
            out.append(f'<figure><img alt="{e(block.key)}" src="data:image/png;base64,{_png_base64(block)}">'
                       f"<figcaption>{e(block.caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------- PDF

_MARGIN_IN = 0.6
_FOOTER_IN = 0.55


def _tex_safe(text: str) -> str:
    """Text as matplotlib draws it literally (a '$' would start mathtext)."""
    return str(text).replace("$", r"\$")


@lru_cache(maxsize=4096)
def _advance_at_10pt(char: str, mono: bool, bold: bool) -> float:
    """Advance (points) of one character at 10 pt, unhinted, as the PDF draws it."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    prop = FontProperties(family="monospace" if mono else "sans-serif", weight="bold" if bold else "normal",
                          size=10.0)
    return float(TextToPath().get_text_width_height_descent(char, prop, ismath=False)[0])


def text_width_in(text: str, size_pt: float, mono: bool = False, bold: bool = False) -> float:
    """Width (inches) of one line of text in matplotlib's default font: the sum of the characters' advances
    (kerning, which only tightens DejaVu's pairs, left out: never an underestimate)."""
    return sum(_advance_at_10pt(c, bool(mono), bool(bold)) for c in str(text)) * size_pt / 10.0 / 72.0


def _wrap_to(text: str, width_in: float, size_pt: float, mono: bool = False, bold: bool = False) -> List[str]:
    """``text`` wrapped to lines of at most about ``width_in``."""
    text = str(text)
    if not text or text_width_in(text, size_pt, mono, bold) <= width_in:
        return [text]
    per_char = text_width_in(text, size_pt, mono, bold) / len(text)
    return _wrap(text, 0.97 * width_in / per_char)


def _wrap(text: str, chars: int) -> List[str]:
    chars = max(4, int(chars))
    lines: List[str] = []
    for paragraph in str(text).split("\n"):
        lines += textwrap.wrap(paragraph, chars, break_long_words=True, break_on_hyphens=False) or [""]
    return lines


class _PdfPages:
    """A4 pages as lists of drawing operations (a function of the page's Figure); laid out top down.

    Positions are in inches from the page's top-left corner.
    """

    def __init__(self):
        self.pages: List[List[Callable]] = []
        self.y = 0.0
        self.new_page()

    @property
    def width_in(self) -> float:
        return A4_IN[0] - 2 * _MARGIN_IN

    @property
    def room_in(self) -> float:
        return A4_IN[1] - _FOOTER_IN - self.y

    def new_page(self) -> None:
        self.pages.append([])
        self.y = _MARGIN_IN

    def need(self, height_in: float) -> None:
        """Start a new page unless ``height_in`` fits below the cursor."""
        if height_in > self.room_in and self.y > _MARGIN_IN + 1e-6:
            self.new_page()

    def text(self, x_in: float, y_in: float, text: str, size: float, **kwargs) -> None:
        def op(fig, x=x_in, y=y_in):
            fig.text(x / A4_IN[0], 1.0 - y / A4_IN[1], _tex_safe(text), fontsize=size, va="top", ha="left", **kwargs)
        self.pages[-1].append(op)

    def rule(self, y_in: float, width: float = 0.6, color: str = "0.45") -> None:
        def op(fig, y=y_in):
            from matplotlib.lines import Line2D
            yy = 1.0 - y / A4_IN[1]
            fig.add_artist(Line2D([_MARGIN_IN / A4_IN[0], 1.0 - _MARGIN_IN / A4_IN[0]], [yy, yy], lw=width,
                                  color=color, transform=fig.transFigure))
        self.pages[-1].append(op)

    def band(self, y_in: float, height_in: float, color: str = "0.9") -> None:
        def op(fig, y=y_in):
            from matplotlib.patches import Rectangle
            fig.add_artist(Rectangle((_MARGIN_IN / A4_IN[0], 1.0 - (y + height_in) / A4_IN[1]),
                                     self.width_in / A4_IN[0], height_in / A4_IN[1], color=color, lw=0,
                                     transform=fig.transFigure, zorder=-1))
        self.pages[-1].append(op)

    # -- blocks

    def heading(self, block: Heading, keep_in: float = 0.8) -> None:
        size = {1: 15.0, 2: 11.5}.get(block.level, 9.5)
        lines = _wrap_to(block.text, self.width_in, size, bold=True)
        height = len(lines) * size * 1.35 / 72 + 0.12
        self.need(height + keep_in)
        if block.level <= 2 and self.y > _MARGIN_IN + 1e-6:
            self.y += 0.12
        for line in lines:
            self.text(_MARGIN_IN, self.y, line, size, fontweight="bold", color="#123")
            self.y += size * 1.35 / 72
        if block.level <= 2:
            self.rule(self.y + 0.02, 1.2 if block.level == 1 else 0.6)
        self.y += 0.1

    def paragraph(self, text: str, size: float = 8.0, indent_in: float = 0.0, **kwargs) -> None:
        for line in _wrap_to(text, self.width_in - indent_in, size):
            self.need(size * 1.35 / 72)
            self.text(_MARGIN_IN + indent_in, self.y, line, size, **kwargs)
            self.y += size * 1.35 / 72
        self.y += 0.06

    def key_values(self, block: KeyValues, size: float = 8.0) -> None:
        key_in = min(2.2, max(text_width_in(k, size, bold=True) for k, _ in block.pairs) + 0.2)
        for key, value in block.pairs:
            lines = _wrap_to(value, self.width_in - key_in, size)
            self.need(len(lines) * size * 1.35 / 72)
            self.text(_MARGIN_IN, self.y, key, size, fontweight="bold")
            for line in lines:
                self.text(_MARGIN_IN + key_in, self.y, line, size)
                self.y += size * 1.35 / 72
        self.y += 0.08

    def table(self, block: Table) -> None:
        size, mono = (6.0 if block.mono else 7.5), block.mono
        family = "monospace" if mono else "sans-serif"
        pad_in = 0.08
        ncols = len(block.header)

        def natural_in(c: int, at: float) -> float:  # widest cell; a header wraps at its spaces
            header = max(text_width_in(w, at, mono, True) for w in (block.header[c].split() or [""]))
            return max([header] + [text_width_in(r[c], at, mono) for r in block.rows])

        natural = [natural_in(c, size) + 0.01 for c in range(ncols)]
        room = self.width_in - pad_in * ncols
        if sum(natural) > room:  # smaller type, down to 5 pt
            size = max(5.0, 0.98 * size * room / sum(natural))
            natural = [natural_in(c, size) + 0.01 for c in range(ncols)]
        widths = list(natural)
        if sum(widths) > room:  # cap the widest columns until the table fits; their cells wrap
            low, high = 0.0, max(natural)
            for _ in range(30):
                cap = 0.5 * (low + high)
                low, high = (cap, high) if sum(min(w, cap) for w in natural) <= room else (low, cap)
            widths = [min(w, low) for w in natural]
        x = [_MARGIN_IN]
        for w in widths[:-1]:
            x.append(x[-1] + w + pad_in)
        line_in = size * 1.3 / 72

        def row_lines(cells, bold=False):
            return [_wrap_to(cell, widths[c], size, mono, bold) for c, cell in enumerate(cells)]

        def draw_row(cells, bold=False, shade=False):
            wrapped = row_lines(cells, bold)
            height = max(len(w) for w in wrapped) * line_in + 0.04
            if shade:
                self.band(self.y - 0.01, height, "0.93" if not bold else "0.85")
            for c, lines in enumerate(wrapped):
                for k, line in enumerate(lines):
                    self.text(x[c], self.y + k * line_in, line, size, family=family,
                              fontweight="bold" if bold else "normal")
            self.y += height

        header_in = max(len(w) for w in row_lines(block.header, True)) * line_in + 0.04
        self.need(header_in + line_in * 2)
        draw_row(block.header, bold=True, shade=True)
        for i, row in enumerate(block.rows):
            height = max(len(w) for w in row_lines(row)) * line_in + 0.04
            if height > self.room_in:
                self.new_page()
                draw_row(block.header, bold=True, shade=True)
            draw_row(row, shade=(i % 2 == 1))
        self.y += 0.12

    def figure(self, block: FigureBlock, title: Optional[Heading]) -> None:
        for k, part in enumerate(block.parts):
            self.new_page()
            if title is not None:
                self.heading(Heading(title.text + (f" ({k + 1}/{len(block.parts)})" if len(block.parts) > 1 else ""),
                                     title.level), keep_in=0.0)
            self.paragraph(block.caption, 7.0, color="0.25")
            height = min(block.pdf_height_in(part), self.room_in - 0.1)
            top, bottom = self.y + 0.25, self.y + height  # room for the axes' titles
            rect = (_MARGIN_IN / A4_IN[0] + 0.02, 1.0 - bottom / A4_IN[1], 1.0 - _MARGIN_IN / A4_IN[0],
                    1.0 - top / A4_IN[1])

            def op(fig, part=part, rect=rect):
                block.draw(fig, rect, part)
            self.pages[-1].append(op)
            self.y = bottom + 0.2
        self.new_page()


def render_pdf(blocks: list, title: str, footer: str) -> bytes:
    """The report as PDF: A4 pages, text and tables laid out top down, one page per figure part (vector),
    numbered pages with ``footer``."""
    import matplotlib
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure

    layout = _PdfPages()
    k = 0
    while k < len(blocks):
        block = blocks[k]
        following = blocks[k + 1] if k + 1 < len(blocks) else None
        if isinstance(block, Heading) and isinstance(following, FigureBlock):
            layout.figure(following, block)
            k += 2
            continue
        if isinstance(block, Heading):
            layout.heading(block)
        elif isinstance(block, Paragraph):
            layout.paragraph(block.text, {"small": 6.8}.get(block.style, 8.0),
                             color={"small": "0.3", "note": "#744"}.get(block.style, "black"))
        elif isinstance(block, KeyValues):
            layout.key_values(block)
        elif isinstance(block, Table) and not block.html_only:
            layout.table(block)
        elif isinstance(block, Bullets):
            for item in block.items:
                layout.paragraph("• " + item, 7.5, color="#7a3b00" if block.style == "warning" else "black")
        elif isinstance(block, FigureBlock):
            layout.figure(block, None)
        k += 1
    pages = [ops for ops in layout.pages if ops]
    buffer = io.BytesIO()
    with matplotlib.rc_context({"pdf.fonttype": 42}), \
            PdfPages(buffer, metadata={"Title": title, "Creator": "LuDosimetry"}) as pdf:
        for number, ops in enumerate(pages, start=1):
            fig = Figure(figsize=A4_IN)
            for op in ops:
                op(fig)
            fig.text(0.5, 0.25 / A4_IN[1], _tex_safe(f"{footer} — page {number} of {len(pages)}"), fontsize=6.5,
                     ha="center", color="0.35")
            pdf.savefig(fig)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ the files

def report_files(folder, shown_as=None) -> Dict[str, bytes]:
    """``report.html`` and ``report.pdf`` of a run's output folder, built from its files alone.

    Parameters
    ----------
    folder : path-like
        The output folder.
    shown_as : path-like, optional
        The folder's name in the report, when ``folder`` is a temporary folder that will be renamed.

    Raises
    ------
    OutputError, StudyError
        As :func:`read_run_folder`.
    """
    run = read_run_folder(folder)
    if shown_as is not None:
        run.path = Path(shown_as).absolute()
    res = run.results
    who = res.get("patient_name") or res.get("patient_id") or "patient"
    title = f"Dosimetry report — {who}"
    blocks = report_blocks(run)
    footer = f"{who} ({res.get('patient_id', MISSING)}), injection {_when(res.get('injection_time'))}"
    return {REPORT_HTML_FILE: render_html(blocks, title).encode("utf-8"),
            REPORT_PDF_FILE: render_pdf(blocks, title, footer)}


def write_report(folder) -> List[Path]:
    """Rebuild ``report.html`` and ``report.pdf`` in an existing output folder of a run
    (:func:`~LuDosimetryLib.io.export.add_files_to_output`: atomically, the folder's marker kept right, a
    file LuDosimetry did not write never replaced).

    Raises
    ------
    OutputError
        The folder is not a LuDosimetry output, or a report file there is not LuDosimetry's.
    StudyError
        It is not a run's output (no results.json of a run), or one of its files cannot be read.
    """
    from .io.export import add_files_to_output, check_files_addable

    names = [REPORT_HTML_FILE, REPORT_PDF_FILE]
    check_files_addable(folder, names)  # refuse before the work
    return add_files_to_output(folder, report_files(folder))
