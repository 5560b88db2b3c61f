"""The only part of LuDosimetryLib that makes MRML nodes and drives a 3D Slicer scene.

- :mod:`.nodes` — the scene bridge: LuDosimetry images, VOIs and results as MRML nodes, edited VOIs back,
  scenes for plain Python (PyPI ``slicer-core``), .mrb bundles.
- :mod:`.session` — :class:`~.session.DosimetrySession`: run, load, recompute with edited VOIs, export, the
  DICOM database; the Slicer module's logic delegates to it, headless scripts use it directly.

``slicer``/``vtk`` are imported inside the functions that need them: importing this package works in plain
Python, and nothing here imports Qt or the Slicer application.
"""
from .nodes import (
    LPS_TO_RAS, BINARY_LABELMAP, VOI_COLUMN, TIME_POINT_ATTRIBUTE, REGISTERED_TIME_POINT_ATTRIBUTE,
    REFERENCE_TIME_POINT_ATTRIBUTE, REFERENCE_VOLUME_ROLE, create_scene, release_scene, study_item,
    place_in_hierarchy, time_point_of, nodes_by_time_point, set_time_point, vtk_id_list, ijk_to_ras_matrix,
    add_volume, image_from_volume_node, add_segmentation, add_structure_set, segment_names, segment_colors,
    masks_from_segmentation, result_columns, add_results_table, table_rows, set_text_table, add_dvh_chart,
    add_tac_chart, add_results, add_time_points, add_registered_spects, registered_spect_nodes, referenced_series_for,
    export_masks_rtstruct, export_segmentation_rtstruct, write_working_study, save_mrb, load_mrb,
    PLANAR_SESSION_ATTRIBUTE, add_whole_body_table, add_planar_view, planar_regions_from_segmentation,
    planar_view_nodes)
from .session import DosimetrySession

__all__ = [
    "LPS_TO_RAS",
    "BINARY_LABELMAP",
    "VOI_COLUMN",
    "TIME_POINT_ATTRIBUTE",
    "REGISTERED_TIME_POINT_ATTRIBUTE",
    "REFERENCE_TIME_POINT_ATTRIBUTE",
    "REFERENCE_VOLUME_ROLE",
    "create_scene",
    "release_scene",
    "study_item",
    "place_in_hierarchy",
    "time_point_of",
    "nodes_by_time_point",
    "set_time_point",
    "vtk_id_list",
    "ijk_to_ras_matrix",
    "add_volume",
    "image_from_volume_node",
    "add_segmentation",
    "add_structure_set",
    "segment_names",
    "segment_colors",
    "masks_from_segmentation",
    "result_columns",
    "add_results_table",
    "table_rows",
    "set_text_table",
    "add_dvh_chart",
    "add_tac_chart",
    "add_results",
    "add_time_points",
    "add_registered_spects",
    "registered_spect_nodes",
    "referenced_series_for",
    "export_masks_rtstruct",
    "export_segmentation_rtstruct",
    "write_working_study",
    "save_mrb",
    "load_mrb",
    "PLANAR_SESSION_ATTRIBUTE",
    "add_whole_body_table",
    "add_planar_view",
    "planar_regions_from_segmentation",
    "planar_view_nodes",
    "DosimetrySession",
]
