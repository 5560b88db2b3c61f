"""The per-VOI results, fits and study inventory as tables: columns, rows, cell text and the CSV.

Plain Python (no MRML, no Qt). The Slicer panel fills its Qt tables from these rows, the scene's table
node takes the same columns (:func:`LuDosimetryLib.mrml.nodes.add_results_table`), and every run writes
the same table as ``voi_results.csv`` (:func:`voi_results_csv_text`).
"""
from __future__ import annotations

import csv
import io
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

#: The per-VOI quantities of the results table: (attribute of a VOI result, column title). The mean dose
#: is MIRD's, mass-weighted (Σ D·m / Σ m); the volume-weighted mean (Σ D·v / Σ v) is beside it (empty for
#: the results of earlier versions, which have only a volume-weighted ``mean_dose_gy``).
RESULT_COLUMNS: Tuple[Tuple[str, str], ...] = (
    ("volume_ml", "Volume (mL)"),
    ("mass_g", "Mass (g)"),
    ("tia_bq_s", "TIA (Bq·s)"),
    ("tiac_h", "TIAC (h)"),
    ("fit_model", "Fit model"),
    ("effective_half_life_h", "Effective half-life (h)"),
    ("mean_dose_gy", "Mean dose, mass-weighted (Gy)"),
    ("mean_dose_volume_weighted_gy", "Mean dose, volume-weighted (Gy)"),
    ("d2_gy", "D2 (Gy)"),
    ("d50_gy", "D50 (Gy)"),
    ("d98_gy", "D98 (Gy)"),
    ("max_dose_gy", "Max dose (Gy)"),
    ("gy_per_gbq", "Dose per activity (Gy/GBq)"),
    # radiobiology (LuDosimetryLib.radiobiology): none for a tissue without alpha/beta (results.json gives why)
    ("bed_gy", "BED (Gy)"),
    ("eqd2_gy", "EQD2 (Gy)"),
    # relative standard uncertainties, k = 1 (LuDosimetryLib.uncertainty; the budget is in results.json)
    ("tia_uncertainty_pct", "u(TIA) (%)"),
    ("tia_random_uncertainty_pct", "u(TIA), counting and fit (%)"),
    ("mean_dose_uncertainty_pct", "u(mean dose) (%)"),
)

#: Per-VOI quantities shown after RESULT_COLUMNS only when a run gives them (reduced time points: the TIA
#: of the fit on every time point and the relative difference of the reduced TIA from it).
OPTIONAL_RESULT_COLUMNS: Tuple[Tuple[str, str], ...] = (
    ("tia_full_bq_s", "TIA all time points (Bq·s)"),
    ("reduced_relative_difference", "Reduced vs all time points (relative)"),
)

#: Title of the VOI-name column.
VOI_COLUMN = "VOI"

#: Text of a table cell without a value (None or NaN) in the panel; the CSV leaves such a cell empty.
MISSING_TEXT = "—"

#: Columns of the study inventory table: (key of a row from :func:`inventory_rows`, column title).
INVENTORY_COLUMNS: Tuple[Tuple[str, str], ...] = (
    ("time_point", "Time point"),
    ("hours_post_injection", "Hours p.i."),
    ("role", "Role"),
    ("modality", "Modality"),
    ("description", "Description"),
    ("code", "Code"),
    ("files", "Files"),
)

#: Columns of the fits table: (key of a row from :func:`fit_rows`, column title).
FIT_COLUMNS: Tuple[Tuple[str, str], ...] = (
    ("fit_model", "Model"),
    ("effective_half_life_h", "Effective half-life (h)"),
    ("tia_bq_s", "TIA (Bq·s)"),
    ("tia_se_bq_s", "TIA SE (Bq·s)"),
    ("tiac_h", "TIAC (h)"),
    ("fit_warnings", "Warnings"),
)


def _value(voi, attribute: str):
    """A VOI's value from a VoiResult (attribute) or from results.json (key); None when absent.

    The ``results.json`` of an earlier version (no ``mean_dose_volume_weighted_gy``) has a volume-weighted
    ``mean_dose_gy``: it is shown as the volume-weighted mean, never under the mass-weighted title."""
    if not isinstance(voi, dict):
        return getattr(voi, attribute, None)
    if "mean_dose_volume_weighted_gy" not in voi and attribute in ("mean_dose_gy", "mean_dose_volume_weighted_gy"):
        return voi.get("mean_dose_gy") if attribute == "mean_dose_volume_weighted_gy" else None
    return voi.get(attribute)


def result_columns_for(vois) -> List[Tuple[str, str]]:
    """The results table's columns for a run's VOIs (``results.vois`` or ``results.json["vois"]``):
    :data:`RESULT_COLUMNS`, then each of :data:`OPTIONAL_RESULT_COLUMNS` some VOI has a value for."""
    values = list(vois.values())
    return list(RESULT_COLUMNS) + [(attribute, title) for attribute, title in OPTIONAL_RESULT_COLUMNS
                                   if any(_value(voi, attribute) is not None for voi in values)]


def result_rows(vois, columns: Sequence[Tuple[str, str]] = RESULT_COLUMNS) -> List[Tuple[str, List[Any]]]:
    """``[(VOI name, [value of each column's attribute])]`` in the order of ``vois``; None where a VOI
    has no value."""
    return [(str(name), [_value(voi, attribute) for attribute, _ in columns]) for name, voi in vois.items()]


def fit_rows(vois) -> List[Dict[str, Any]]:
    """Rows of the fits table: per VOI its name (key ``voi``) and the :data:`FIT_COLUMNS` values (fit
    warnings joined by "; ")."""
    rows = []
    for name, voi in vois.items():
        row: Dict[str, Any] = {"voi": str(name)}
        for key, _ in FIT_COLUMNS:
            value = _value(voi, key)
            row[key] = "; ".join(str(w) for w in (value or [])) if key == "fit_warnings" else value
        rows.append(row)
    return rows


def inventory_rows(inventory_json: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Rows of the inventory table from ``Inventory.to_json()``: one per series, in its order.

    Each row has the keys of :data:`INVENTORY_COLUMNS`: ``time_point`` ("TP<n>", "" when the series joins
    none), ``hours_post_injection`` (h, of the series' time point; None when unknown), ``role`` (with the
    projection form, e.g. "spect_projections (unaltered)"), ``modality``, ``description``, ``code`` (""
    when none) and ``files`` (count).
    """
    if not inventory_json:
        return []
    hours = {tp["index"]: tp.get("hours_post_injection") for tp in inventory_json.get("time_points", [])}
    rows = []
    for series in inventory_json.get("series", []):
        index = series.get("time_point")
        role = series.get("role", "")
        if series.get("form"):
            role = f"{role} ({series['form']})"
        rows.append({"time_point": "" if index is None else f"TP{index + 1}",
                     "hours_post_injection": None if index is None else hours.get(index),
                     "role": role, "modality": series.get("modality", ""),
                     "description": series.get("description", ""), "code": series.get("code") or "",
                     "files": int(series.get("files", 0))})
    return rows


def has_projections(inventory_json: Optional[Dict[str, Any]]) -> bool:
    """Whether an ``Inventory.to_json()`` lists SPECT projection series (the panel offers reconstruction)."""
    return any(s.get("role") == "spect_projections" for s in (inventory_json or {}).get("series", []))


def format_value(attribute: str, value: Any) -> str:
    """Text of one table cell: 4 significant digits, activities in scientific notation, :data:`MISSING_TEXT`
    for no value (None or NaN)."""
    if value is None:
        return MISSING_TEXT
    if isinstance(value, str):
        return value
    value = float(value)
    if math.isnan(value):
        return MISSING_TEXT
    if not math.isfinite(value):
        return str(value)
    if attribute in ("tia_bq_s", "tia_full_bq_s"):
        return f"{value:.3e}"
    return f"{value:.4g}"


def voi_results_csv_text(vois) -> str:
    """The per-VOI results CSV: a row per VOI (``results.vois`` or ``results.json["vois"]``), the VOI name then
    the :func:`result_columns_for` values at full precision (empty where a VOI has none)."""
    columns = result_columns_for(vois)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([VOI_COLUMN] + [title for _, title in columns])
    for name, values in result_rows(vois, columns):
        writer.writerow([name] + ["" if v is None else (v if isinstance(v, str) else repr(float(v))) for v in values])
    return buffer.getvalue()
