"""MRML bridge: LuDosimetry images, VOIs and results as 3D Slicer scene nodes, and edited VOIs back.

The only library module that touches ``slicer``/``vtk``; both are imported inside the functions, so that
``import LuDosimetryLib.mrml`` works in plain Python and the rest of the library never needs Slicer.
It runs inside Slicer (``slicer.mrmlScene``) and in plain Python with the PyPI ``slicer-core`` package
(MRML and module-logic classes without the application): :func:`create_scene` builds a scene with the
logics Slicer would have registered. No function here uses the ``slicer.util`` helpers that need the
application (``loadVolume``, ``saveNode``...).

Geometry. SimpleITK images are in DICOM patient coordinates (LPS, mm); Slicer's world is RAS, so the
IJK→RAS matrix is ``diag(-1, -1, 1) · [direction · diag(spacing) | origin]``: x and y flip sign, z does
not. Origin, spacing and directions are stored separately in the node (no matrix inversion), so
image → node → image is exact.

Nodes made here:

- SPECT, CT, dose (Gy), TIA (Bq·s/mL) → ``vtkMRMLScalarVolumeNode``;
- VOIs of one time point → one ``vtkMRMLSegmentationNode`` (segment names and colours from the RTSTRUCT);
- per-VOI results → ``vtkMRMLTableNode`` (a row per VOI, the scalar keys of ``results.json``);
- DVH and TAC curves → ``vtkMRMLTableNode`` + ``vtkMRMLPlotSeriesNode`` + ``vtkMRMLPlotChartNode``;
- after a run with registration, each registered time point's SPECT carried to the reference grid →
  ``vtkMRMLScalarVolumeNode`` (:func:`add_registered_spects`, the registration check view);
- all placed in the subject hierarchy under the patient and the study.

And back: :func:`masks_from_segmentation` gives the (edited) segments as masks on any image grid,
:func:`export_segmentation_rtstruct` writes them as a NEW RTSTRUCT, and :func:`write_working_study`
builds a working copy of a study folder (links to the original images, the edited VOIs as new
RTSTRUCTs, the original RTSTRUCTs left out) on which :func:`LuDosimetryLib.pipeline.run_study` recomputes.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import LuDosimetryError, OutputError, StructureError
from ..result_tables import VOI_COLUMN

#: LPS → RAS: x and y change sign (DICOM PS3.3 C.7.6.2.1.1 patient axes vs Slicer's RAS world).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

#: Name of the binary-labelmap representation of a segmentation (vtkSegmentationConverter).
BINARY_LABELMAP = "Binary labelmap"


#: Subject-hierarchy attribute holding the time-point index (0-based) of a node loaded by this module.
TIME_POINT_ATTRIBUTE = "LuDosimetry.TimePoint"

#: Node attribute of a registered SPECT (the check view): the moving time point's index (0-based).
REGISTERED_TIME_POINT_ATTRIBUTE = "LuDosimetry.RegisteredTimePoint"

#: Node attribute of a registered SPECT: the index (0-based) of the reference time point it was carried to.
REFERENCE_TIME_POINT_ATTRIBUTE = "LuDosimetry.ReferenceTimePoint"

#: Node-reference role from a registered SPECT to the reference SPECT volume it is to be compared with.
REFERENCE_VOLUME_ROLE = "LuDosimetryReferenceVolume"

#: Node attribute of a planar view's volume and regions (#14): the acquisition date/time of its session (ISO 8601).
PLANAR_SESSION_ATTRIBUTE = "LuDosimetry.PlanarSession"

# Logics of the scenes made by create_scene, kept alive as long as the scene (VTK objects held in Python
# are freed when the last Python reference goes).
_SCENE_LOGICS: Dict[int, list] = {}
_OWNED_CACHE_DIRS: Dict[int, str] = {}  # id(scene) -> the temporary cache folder create_scene made


def _slicer():
    try:
        import slicer
    except ImportError as exc:  # pragma: no cover - only without slicer-core / Slicer
        raise LuDosimetryError("the MRML bridge needs 3D Slicer or the 'slicer-core' Python package") from exc
    return slicer


# --------------------------------------------------------------------------------------------- scene

def create_scene(cache_dir: Optional[os.PathLike] = None):
    """A new MRML scene with the logics Slicer registers, for scripts and tests without the application.

    Application, colour (default colour tables), volumes, segmentations, subject-hierarchy, tables and
    plots logics are attached, and a data-IO/cache manager so that the scene can read ``.mrb`` bundles.

    Parameters
    ----------
    cache_dir : path-like, optional
        Folder for the cache manager (a new temporary folder by default).

    Returns
    -------
    vtkMRMLScene
    """
    slicer = _slicer()
    import vtk
    scene = slicer.vtkMRMLScene()
    cache = slicer.vtkCacheManager()
    if cache_dir is None:  # ours: removed by release_scene, or when the interpreter exits
        cache_dir = tempfile.mkdtemp(prefix="ludosimetry-mrml-cache-")
        stale = _OWNED_CACHE_DIRS.get(id(scene))  # a scene gone without release_scene had this id
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
        _OWNED_CACHE_DIRS[id(scene)] = cache_dir
    cache.SetRemoteCacheDirectory(str(cache_dir))
    io_manager = slicer.vtkDataIOManager()
    io_manager.SetCacheManager(cache)
    scene.SetCacheManager(cache)
    scene.SetDataIOManager(io_manager)

    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    logics: list = [cache, io_manager, app_logic]
    for cls_name in ("vtkSlicerColorLogic", "vtkSlicerVolumesLogic", "vtkSlicerSegmentationsModuleLogic",
                     "vtkSlicerSubjectHierarchyModuleLogic", "vtkSlicerTablesLogic", "vtkSlicerPlotsLogic"):
        cls = getattr(slicer, cls_name, None)
        if cls is None:
            continue
        logic = cls()
        logic.SetMRMLApplicationLogic(app_logic)
        if cls_name == "vtkSlicerColorLogic":
            # Without the application there are no colour files to look for; the built-in default colour
            # tables are still added. Silence the error VTK logs about the missing files.
            quiet = vtk.vtkObject.GetGlobalWarningDisplay()
            vtk.vtkObject.GlobalWarningDisplayOff()
            try:
                logic.SetMRMLScene(scene)
            finally:
                vtk.vtkObject.SetGlobalWarningDisplay(quiet)
        else:
            logic.SetMRMLScene(scene)
        logics.append(logic)
    _SCENE_LOGICS[id(scene)] = logics
    _subject_hierarchy(scene)
    return scene


def release_scene(scene) -> None:
    """Clear a scene made by :func:`create_scene` and drop its logics."""
    scene.Clear(True)
    _SCENE_LOGICS.pop(id(scene), None)
    owned = _OWNED_CACHE_DIRS.pop(id(scene), None)
    if owned is not None:
        shutil.rmtree(owned, ignore_errors=True)


def _remove_owned_cache_dirs() -> None:
    for folder in _OWNED_CACHE_DIRS.values():
        shutil.rmtree(folder, ignore_errors=True)
    _OWNED_CACHE_DIRS.clear()


atexit.register(_remove_owned_cache_dirs)


def _subject_hierarchy(scene):
    slicer = _slicer()
    sh = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene) \
        if hasattr(slicer.vtkMRMLSubjectHierarchyNode, "ResolveSubjectHierarchy") \
        else slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if sh is None:
        sh = scene.AddNewNodeByClass("vtkMRMLSubjectHierarchyNode", "SubjectHierarchy")
    return sh


def study_item(scene, patient_id: str, patient_name: str = "", study_instance_uid: str = "",
               study_description: str = "") -> int:
    """Subject-hierarchy item of a study under its patient (both created once and found again after).

    Returns
    -------
    int
        The study's item ID.
    """
    slicer = _slicer()
    sh = _subject_hierarchy(scene)
    consts = slicer.vtkMRMLSubjectHierarchyConstants
    uid_name = consts.GetDICOMUIDName()
    patient_id = patient_id or "ANON"
    patient = 0
    children = vtk_id_list()
    sh.GetItemChildren(sh.GetSceneItemID(), children)
    for k in range(children.GetNumberOfIds()):
        item = children.GetId(k)
        if sh.GetItemAttribute(item, consts.GetDICOMPatientIDAttributeName()) == patient_id:
            patient = item
            break
    if not patient:
        patient = sh.CreateSubjectItem(sh.GetSceneItemID(), patient_name or patient_id)
        sh.SetItemAttribute(patient, consts.GetDICOMPatientIDAttributeName(), patient_id)
        sh.SetItemAttribute(patient, consts.GetDICOMPatientNameAttributeName(), patient_name or patient_id)
        sh.SetItemUID(patient, uid_name, patient_id)
    if study_instance_uid:
        found = sh.GetItemByUID(uid_name, study_instance_uid)
        if found:
            return found
    study = sh.CreateStudyItem(patient, study_description or "Dosimetry")
    if study_instance_uid:
        sh.SetItemUID(study, uid_name, study_instance_uid)
        # the attribute Slicer's DICOM plugins read ("DICOM.StudyInstanceUID"), not the bare tag name
        sh.SetItemAttribute(study, consts.GetDICOMStudyInstanceUIDAttributeName(), study_instance_uid)
    return study


def place_in_hierarchy(node, parent_item: Optional[int], time_point: Optional[int] = None) -> int:
    """Put a data node under ``parent_item`` in the subject hierarchy (created for it when absent)."""
    sh = _subject_hierarchy(node.GetScene())
    item = sh.GetItemByDataNode(node)
    parent = parent_item or sh.GetSceneItemID()
    if not item:
        item = sh.CreateItem(parent, node)
    else:
        sh.SetItemParent(item, parent)
    if time_point is not None:
        sh.SetItemAttribute(item, TIME_POINT_ATTRIBUTE, str(int(time_point)))
    return item


def time_point_of(node) -> Optional[int]:
    """Time-point index (0-based) stored on a node's subject-hierarchy item, or None."""
    sh = _subject_hierarchy(node.GetScene())
    item = sh.GetItemByDataNode(node)
    value = sh.GetItemAttribute(item, TIME_POINT_ATTRIBUTE) if item else ""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def nodes_by_time_point(scene, class_name: str) -> Dict[int, Any]:
    """``{time point: node}`` of the nodes of ``class_name`` that carry a time point (the last one in the
    scene where several carry the same)."""
    out: Dict[int, Any] = {}
    for k in range(scene.GetNumberOfNodesByClass(class_name)):
        node = scene.GetNthNodeByClass(k, class_name)
        index = time_point_of(node)
        if index is not None:
            out[index] = node
    return out


def set_time_point(node, time_point: int, exclusive_class: Optional[str] = None) -> None:
    """Store ``time_point`` on a node's subject-hierarchy item (the item is created when absent).

    With ``exclusive_class``, the other nodes of that class lose this time point, so that
    :func:`nodes_by_time_point` finds ``node`` for it.
    """
    scene = node.GetScene()
    sh = _subject_hierarchy(scene)
    if exclusive_class:
        for k in range(scene.GetNumberOfNodesByClass(exclusive_class)):
            other = scene.GetNthNodeByClass(k, exclusive_class)
            if other is not node and time_point_of(other) == int(time_point):
                sh.RemoveItemAttribute(sh.GetItemByDataNode(other), TIME_POINT_ATTRIBUTE)
    item = sh.GetItemByDataNode(node)
    if not item:
        item = sh.CreateItem(sh.GetSceneItemID(), node)
    sh.SetItemAttribute(item, TIME_POINT_ATTRIBUTE, str(int(time_point)))


def vtk_id_list():
    import vtk
    return vtk.vtkIdList()


# ------------------------------------------------------------------------------------------- volumes

def ijk_to_ras_matrix(image: sitk.Image) -> np.ndarray:
    """4x4 IJK → RAS matrix (mm) of a 3D SimpleITK image in LPS."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    m[:3, 3] = LPS_TO_RAS @ np.asarray(image.GetOrigin(), dtype=float)
    return m


def _check_3d(image: sitk.Image, what: str) -> None:
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise LuDosimetryError(f"{what}: a 3D scalar image is needed (got {image.GetDimension()}D with "
                               f"{image.GetNumberOfComponentsPerPixel()} components)")


def _set_geometry(target, image: sitk.Image) -> None:
    """Origin, spacing and IJK→RAS directions of a volume node or oriented image data from an LPS image."""
    import vtk
    ras_dir = LPS_TO_RAS @ np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    m = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            m.SetElement(r, c, float(ras_dir[r, c]))
    target.SetSpacing(*[float(s) for s in image.GetSpacing()])
    target.SetOrigin(*[float(v) for v in LPS_TO_RAS @ np.asarray(image.GetOrigin(), dtype=float)])
    if hasattr(target, "SetIJKToRASDirectionMatrix"):
        target.SetIJKToRASDirectionMatrix(m)
    else:
        target.SetDirectionMatrix(m)


def _image_data(array: np.ndarray, vtk_type=None):
    """vtkImageData (deep copy) of a (z, y, x) array; VTK's x runs fastest like numpy's last axis."""
    import vtk
    from vtk.util import numpy_support
    array = np.ascontiguousarray(array)
    data = vtk.vtkImageData()
    data.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    scalars = numpy_support.numpy_to_vtk(array.ravel(), deep=True, array_type=vtk_type)
    data.GetPointData().SetScalars(scalars)
    return data


def add_volume(scene, image: sitk.Image, name: str, *, parent_item: Optional[int] = None,
               time_point: Optional[int] = None, color_node_id: Optional[str] = None,
               attributes: Optional[Mapping[str, str]] = None):
    """Add a SimpleITK image (LPS) as a ``vtkMRMLScalarVolumeNode``.

    Parameters
    ----------
    scene : vtkMRMLScene
    image : SimpleITK.Image
        3D scalar image; its pixel values are copied unchanged (units as in the name).
    name : str
        Node name (made unique in the scene).
    parent_item : int, optional
        Subject-hierarchy item (e.g. from :func:`study_item`) to put the volume under.
    time_point : int, optional
        Stored as the subject-hierarchy attribute :data:`TIME_POINT_ATTRIBUTE`.
    color_node_id : str, optional
        Colour table of the display node (e.g. ``"vtkMRMLColorTableNodeRainbow"``).
    attributes : mapping, optional
        Node attributes (e.g. units).

    Returns
    -------
    vtkMRMLScalarVolumeNode
    """
    _check_3d(image, name)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    node.SetAndObserveImageData(_image_data(sitk.GetArrayViewFromImage(image)))
    _set_geometry(node, image)
    node.CreateDefaultDisplayNodes()
    node.AddDefaultStorageNode()
    display = node.GetDisplayNode()
    if display is not None:
        if color_node_id and scene.GetNodeByID(color_node_id) is not None:
            display.SetAndObserveColorNodeID(color_node_id)
        display.AutoWindowLevelOn()
    for key, value in (attributes or {}).items():
        node.SetAttribute(str(key), str(value))
    place_in_hierarchy(node, parent_item, time_point)
    return node


def image_from_volume_node(node) -> sitk.Image:
    """SimpleITK image (LPS, float64 → the node's scalar type) of a scalar volume node.

    A parent transform is not applied (the node's own IJK→RAS is used).
    """
    from vtk.util import numpy_support
    data = node.GetImageData()
    if data is None:
        raise LuDosimetryError(f"volume {node.GetName()!r} has no image data")
    nx, ny, nz = data.GetDimensions()
    array = numpy_support.vtk_to_numpy(data.GetPointData().GetScalars())
    if array.ndim != 1:
        raise LuDosimetryError(f"volume {node.GetName()!r} is not a scalar volume")
    image = sitk.GetImageFromArray(array.reshape(nz, ny, nx).copy())
    return _with_node_geometry(image, node)


def _with_node_geometry(image: sitk.Image, node, extent_start=(0, 0, 0)) -> sitk.Image:
    import vtk
    m = vtk.vtkMatrix4x4()
    if hasattr(node, "GetIJKToRASDirectionMatrix"):
        node.GetIJKToRASDirectionMatrix(m)
    else:
        node.GetDirectionMatrix(m)
    ras_dir = np.array([[m.GetElement(r, c) for c in range(3)] for r in range(3)])
    spacing = np.asarray(node.GetSpacing(), dtype=float)
    origin_ras = np.asarray(node.GetOrigin(), dtype=float)
    if any(extent_start):
        origin_ras = origin_ras + ras_dir @ (spacing * np.asarray(extent_start, dtype=float))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in LPS_TO_RAS @ origin_ras])
    image.SetDirection([float(v) for v in (LPS_TO_RAS @ ras_dir).ravel()])
    return image


# ------------------------------------------------------------------------------------------ segments

def add_segmentation(scene, masks: Mapping[str, np.ndarray], reference: sitk.Image, name: str, *,
                     colors: Optional[Mapping[str, Sequence[float]]] = None, parent_item: Optional[int] = None,
                     time_point: Optional[int] = None, reference_volume=None):
    """Add VOI masks as a ``vtkMRMLSegmentationNode`` (binary-labelmap segments on ``reference``'s grid).

    Parameters
    ----------
    masks : mapping of str to numpy.ndarray
        Segment name → (z, y, x) mask on ``reference``: bool, or fractional coverage (voxels ≥ 0.5 kept).
    reference : SimpleITK.Image
        Grid of the masks (LPS).
    colors : mapping of str to (r, g, b), optional
        0–255 integers (as ROI Display Color) or 0–1 floats.
    reference_volume : vtkMRMLScalarVolumeNode, optional
        Volume the segmentation is drawn on (Segment Editor's source volume; conversion geometry).

    Returns
    -------
    vtkMRMLSegmentationNode
    """
    slicer = _slicer()
    _check_3d(reference, name)
    shape = tuple(reversed(reference.GetSize()))
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    node.CreateDefaultDisplayNodes()
    node.AddDefaultStorageNode()
    if reference_volume is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
        node.SetNodeReferenceID("referenceImageGeometryRef", reference_volume.GetID())
    segmentation = node.GetSegmentation()
    segmentation.SetSourceRepresentationName(BINARY_LABELMAP) if hasattr(segmentation, "SetSourceRepresentationName") \
        else segmentation.SetMasterRepresentationName(BINARY_LABELMAP)
    for k, (segment_name, mask) in enumerate(masks.items()):
        mask = np.asarray(mask)
        if mask.shape != shape:
            raise StructureError(f"VOI {segment_name!r}: mask of shape {mask.shape} on a grid of {shape} (z, y, x)")
        labelmap = slicer.vtkOrientedImageData()
        labelmap.DeepCopy(_image_data((mask >= 0.5).astype(np.uint8)))
        _set_geometry(labelmap, reference)
        segment = slicer.vtkSegment()
        segment.SetName(str(segment_name))
        color = (colors or {}).get(segment_name)
        if color is not None:
            rgb = [float(c) for c in color]
            if max(rgb) > 1.0:
                rgb = [c / 255.0 for c in rgb]
            segment.SetColor(*rgb)
        segment.AddRepresentation(BINARY_LABELMAP, labelmap)
        segmentation.AddSegment(segment, _segment_id(segmentation, str(segment_name)))
    place_in_hierarchy(node, parent_item, time_point)
    return node


def _segment_id(segmentation, name: str) -> str:
    base = "".join(c if c.isalnum() else "_" for c in name) or "segment"
    candidate, n = base, 1
    while segmentation.GetSegment(candidate) is not None:
        n += 1
        candidate = f"{base}_{n}"
    return candidate


def add_structure_set(scene, structure_set, reference: sitk.Image, name: Optional[str] = None, *,
                      supersample: int = 3, parent_item: Optional[int] = None,
                      time_point: Optional[int] = None, reference_volume=None):
    """Add the ROIs of an RTSTRUCT as a segmentation on ``reference``'s grid (names and colours kept).

    Voxels at least half covered by a contour belong to the segment, as in the pipeline.

    Parameters
    ----------
    structure_set : StructureSet or path-like
        From :func:`LuDosimetryLib.io.rtstruct.read_rtstruct`, or the file.
    """
    from ..io.rtstruct import read_rtstruct
    from ..vois import structure_set_masks

    ss = structure_set if hasattr(structure_set, "rois") else read_rtstruct(structure_set)
    masks = structure_set_masks(ss, reference, supersample=supersample)
    colors = {}
    for roi in ss.rois:
        if roi.color is not None and roi.name in masks:
            colors.setdefault(roi.name, roi.color)
    return add_segmentation(scene, masks, reference, name or (ss.label or "VOIs"), colors=colors,
                            parent_item=parent_item, time_point=time_point, reference_volume=reference_volume)


def segment_names(segmentation_node) -> List[str]:
    """Segment names in segmentation order."""
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegment(k).GetName() for k in range(segmentation.GetNumberOfSegments())]


def segment_colors(segmentation_node) -> Dict[str, Tuple[int, int, int]]:
    """``{segment name: (r, g, b)}`` in 0–255."""
    segmentation = segmentation_node.GetSegmentation()
    out = {}
    for k in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(k)
        out[segment.GetName()] = tuple(int(round(255 * c)) for c in segment.GetColor())
    return out


def masks_from_segmentation(segmentation_node, reference: sitk.Image,
                            names: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
    """Segments of a segmentation node as bool (z, y, x) masks on ``reference``'s grid.

    Segments are read from their binary-labelmap representation (created first when the segmentation
    holds only another one, e.g. closed surfaces or planar contours) and resampled nearest-neighbour
    onto ``reference``; on the same grid this is an exact copy.

    Parameters
    ----------
    names : sequence of str, optional
        Only these segments (by name); all by default.

    Raises
    ------
    StructureError
        A named segment is missing, two segments share a name, or no binary labelmap can be made.
    """
    slicer = _slicer()
    from vtk.util import numpy_support

    segmentation = segmentation_node.GetSegmentation()
    node_name = segmentation_node.GetName()
    if not segmentation.ContainsRepresentation(BINARY_LABELMAP):
        if not segmentation.CreateRepresentation(BINARY_LABELMAP):
            raise StructureError(f"segmentation {node_name!r}: its segments cannot be converted to a binary labelmap")
    available = segment_names(segmentation_node)
    duplicates = sorted({n for n in available if available.count(n) > 1})
    if duplicates:
        raise StructureError(f"segmentation {node_name!r}: segment name(s) {duplicates} used more than once")
    wanted = list(available if names is None else names)
    missing = [n for n in wanted if n not in available]
    if missing:
        raise StructureError(f"segmentation {node_name!r} has no segment {', '.join(repr(m) for m in missing)}; "
                             f"available: {', '.join(repr(a) for a in available)}")
    shape = tuple(reversed(reference.GetSize()))
    out: Dict[str, np.ndarray] = {}
    for k in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(k)
        name = segmentation.GetNthSegment(k).GetName()
        if name not in wanted:
            continue
        labelmap = slicer.vtkOrientedImageData()
        segmentation_node.GetBinaryLabelmapRepresentation(segment_id, labelmap)
        extent = labelmap.GetExtent()
        if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
            out[name] = np.zeros(shape, dtype=bool)  # empty segment
            continue
        nx, ny, nz = extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1
        values = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(nz, ny, nx)
        image = sitk.GetImageFromArray((values != 0).astype(np.uint8))
        image = _with_node_geometry(image, labelmap, extent_start=(extent[0], extent[2], extent[4]))
        on_ref = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        out[name] = sitk.GetArrayFromImage(on_ref).astype(bool)
    return {n: out[n] for n in wanted}


# -------------------------------------------------------------------------------------- tables, plots

def result_columns(results) -> List[Tuple[str, str]]:
    """``[(key, column title)]``: the scalar per-VOI keys of ``results.json``, titles equal to the keys."""
    first = next(iter(results.vois.values()), None)
    if first is None:
        return []
    return [(key, key) for key, value in first.to_json().items()
            if value is None or isinstance(value, (str, int, float))]


def add_results_table(scene, results, name: str = "LuDosimetry results", *,
                      columns: Optional[Sequence[Tuple[str, str]]] = None, parent_item: Optional[int] = None):
    """Per-VOI results as a ``vtkMRMLTableNode``: a row per VOI (column :data:`VOI_COLUMN`), then one
    column per ``(attribute, title)`` of ``columns`` (default :func:`result_columns`): numbers as double
    columns (NaN for a missing value), text as string columns."""
    import vtk
    columns = list(columns if columns is not None else result_columns(results))
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    table = node.GetTable()
    names = vtk.vtkStringArray()
    names.SetName(VOI_COLUMN)
    vois = list(results.vois.items())
    for voi_name, _ in vois:
        names.InsertNextValue(str(voi_name))
    table.AddColumn(names)
    for attribute, title in columns:
        values = [getattr(voi, attribute, None) for _, voi in vois]
        if any(isinstance(v, str) for v in values):
            column = vtk.vtkStringArray()
            for v in values:
                column.InsertNextValue("" if v is None else str(v))
        else:
            column = vtk.vtkDoubleArray()
            for v in values:
                column.InsertNextValue(float("nan") if v is None else float(v))
        column.SetName(title)
        table.AddColumn(column)
    node.SetUseColumnTitleAsColumnHeader(True) if hasattr(node, "SetUseColumnTitleAsColumnHeader") else None
    node.AddDefaultStorageNode()
    node.Modified()
    place_in_hierarchy(node, parent_item)
    return node


def table_rows(table_node) -> Dict[str, Dict[str, Any]]:
    """``{VOI: {column title: value}}`` of a table made by :func:`add_results_table` (numbers as float)."""
    table = table_node.GetTable()
    rows: Dict[str, Dict[str, Any]] = {}
    for r in range(table.GetNumberOfRows()):
        row: Dict[str, Any] = {}
        for c in range(1, table.GetNumberOfColumns()):
            column = table.GetColumn(c)
            row[column.GetName()] = column.GetValue(r)
        rows[table.GetColumn(0).GetValue(r)] = row
    return rows


def set_text_table(scene, rows: Sequence[Sequence[str]], name: str, *, node=None, parent_item: Optional[int] = None):
    """A ``vtkMRMLTableNode`` of text cells: ``rows[0]`` the column titles, the other rows the cells.

    ``node`` (a table node of ``scene``) is emptied and filled again; otherwise a new node is added."""
    import vtk
    if node is None or node.GetScene() is not scene:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
        node.AddDefaultStorageNode()
        place_in_hierarchy(node, parent_item)
    table = node.GetTable()
    while table.GetNumberOfColumns():
        table.RemoveColumn(0)
    for c, title in enumerate(rows[0] if rows else ()):
        column = vtk.vtkStringArray()
        column.SetName(str(title))
        for row in rows[1:]:
            column.InsertNextValue(str(row[c]))
        table.AddColumn(column)
    node.Modified()
    return node


def _curve_table(scene, name: str, columns: Mapping[str, np.ndarray], parent_item):
    import vtk
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    table = node.GetTable()
    for title, values in columns.items():
        array = vtk.vtkDoubleArray()
        array.SetName(title)
        for v in np.asarray(values, dtype=float):
            array.InsertNextValue(float(v))
        table.AddColumn(array)
    node.Modified()
    place_in_hierarchy(node, parent_item)
    return node


def _series(scene, name: str, table_node, x: str, y: str, color, *, scatter: bool = False, parent_item=None):
    slicer = _slicer()
    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(name))
    series.SetAndObserveTableNodeID(table_node.GetID())
    series.SetXColumnName(x)
    series.SetYColumnName(y)
    if scatter:
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleNone)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
    else:
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
    if color is not None:
        series.SetColor(*color)
    place_in_hierarchy(series, parent_item)
    return series


def _palette(k: int) -> Tuple[float, float, float]:
    from ..io.rtstruct import DEFAULT_COLORS
    return tuple(c / 255.0 for c in DEFAULT_COLORS[k % len(DEFAULT_COLORS)])


def add_dvh_chart(scene, results, name: str = "LuDosimetry DVH", *, colors: Optional[Mapping[str, Sequence[float]]] = None,
                  parent_item: Optional[int] = None):
    """Cumulative DVHs of ``results.dvhs`` as a plot chart: one table per VOI (``Dose (Gy)``,
    ``Volume (mL)``, ``Volume (%)``) and one line series per VOI.

    Returns
    -------
    vtkMRMLPlotChartNode
    """
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(name))
    chart.SetTitle("Cumulative dose-volume histograms")
    chart.SetXAxisTitle("Dose (Gy)")
    chart.SetYAxisTitle("Volume (%)")
    for k, (voi, (edges, volume)) in enumerate(results.dvhs.items()):
        volume = np.asarray(volume, dtype=float)
        percent = 100.0 * volume / volume[0] if volume.size and volume[0] > 0 else np.zeros_like(volume)
        table = _curve_table(scene, f"{name} {voi}", {"Dose (Gy)": edges, "Volume (mL)": volume,
                                                      "Volume (%)": percent}, parent_item)
        color = _color_for(voi, k, colors)
        series = _series(scene, f"{name} {voi}", table, "Dose (Gy)", "Volume (%)", color, parent_item=parent_item)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    place_in_hierarchy(chart, parent_item)
    return chart


def _color_for(voi: str, k: int, colors) -> Tuple[float, float, float]:
    if colors and voi in colors:
        rgb = [float(c) for c in colors[voi]]
        return tuple(c / 255.0 for c in rgb) if max(rgb) > 1.0 else tuple(rgb)
    return _palette(k)


def add_tac_chart(scene, results, name: str = "LuDosimetry TAC", *, colors: Optional[Mapping[str, Sequence[float]]] = None,
                  samples: int = 200, parent_item: Optional[int] = None):
    """Time-activity curves: measured activity per time point (markers) and the selected fit (line) per VOI.

    Tables hold ``Time (h)`` and ``Activity (MBq)``; the fit is sampled from 0 h to 1.5 × the last time point.

    Returns
    -------
    vtkMRMLPlotChartNode
    """
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(name))
    chart.SetTitle("Time-activity curves")
    chart.SetXAxisTitle("Time after injection (h)")
    chart.SetYAxisTitle("Activity (MBq)")
    hours = np.array([tp.hours_post_injection for tp in results.time_points], dtype=float)
    t_fit = np.linspace(0.0, 1.5 * float(hours.max()) if hours.size else 1.0, samples)
    for k, (voi, result) in enumerate(results.vois.items()):
        color = _color_for(voi, k, colors)
        measured = _curve_table(scene, f"{name} {voi} measured",
                                {"Time (h)": hours, "Activity (MBq)": np.asarray(result.activity_bq) / 1e6},
                                parent_item)
        series = _series(scene, f"{name} {voi} measured", measured, "Time (h)", "Activity (MBq)", color,
                         scatter=True, parent_item=parent_item)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
        fit = (results.fits or {}).get(voi)
        if fit is not None and hasattr(fit, "evaluate"):
            fitted = _curve_table(scene, f"{name} {voi} fit ({result.fit_model})",
                                  {"Time (h)": t_fit, "Activity (MBq)": np.asarray(fit.evaluate(t_fit)) / 1e6},
                                  parent_item)
            series = _series(scene, f"{name} {voi} fit", fitted, "Time (h)", "Activity (MBq)", color,
                             parent_item=parent_item)
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
    place_in_hierarchy(chart, parent_item)
    return chart


def add_whole_body_table(scene, results, name: str = "LuDosimetry whole body", *,
                         parent_item: Optional[int] = None):
    """Whole body, remainder of body and red marrow (#14) as a text ``vtkMRMLTableNode``: a row per quantity the
    run has (:func:`LuDosimetryLib.whole_body.summary_rows`: method, TIA, mean dose, uncertainties); None when
    the run has none of them."""
    from ..result_tables import format_value
    from ..whole_body import summary_rows

    rows = summary_rows(results.whole_body, results.remainder_of_body, results.red_marrow)
    if len(rows) == 1:
        return None
    keys = ("", "", "tia_bq_s", "", "", "")
    text = [rows[0]] + [[format_value(key, value) for key, value in zip(keys, row)] for row in rows[1:]]
    return set_text_table(scene, text, name, parent_item=parent_item)


# ------------------------------------------------------------------------------------------ planar views

def add_planar_view(scene, image: sitk.Image, regions: Mapping[str, np.ndarray], session: str, name: str, *,
                    parent_item: Optional[int] = None) -> Tuple[Any, Any]:
    """A planar session's image (one coronal slice, :func:`LuDosimetryLib.planar.projection.grid_image`: shown in
    the coronal view over the CT) and its VOI regions, as a volume and a segmentation drawn on it.

    Parameters
    ----------
    image : SimpleITK.Image
        Attenuation-corrected geometric mean (Bq per pixel) of the session.
    regions : mapping VOI → bool ndarray (rows, columns)
    session : str
        The session's acquisition date/time (ISO 8601), kept as :data:`PLANAR_SESSION_ATTRIBUTE` on both nodes.

    Returns
    -------
    (vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode)
    """
    volume = add_volume(scene, image, f"{name} (Bq per pixel)", parent_item=parent_item,
                        attributes={PLANAR_SESSION_ATTRIBUTE: session, "LuDosimetry.Units": "Bq/pixel"})
    rows, _one, cols = sitk.GetArrayViewFromImage(image).shape
    segmentation = add_segmentation(scene, {n: np.asarray(m).reshape(rows, 1, cols) for n, m in regions.items()},
                                    image, f"{name} regions", parent_item=parent_item, reference_volume=volume)
    segmentation.SetAttribute(PLANAR_SESSION_ATTRIBUTE, session)
    return volume, segmentation


def planar_regions_from_segmentation(segmentation_node, reference: sitk.Image) -> Dict[str, np.ndarray]:
    """The (edited) segments of a planar view as regions, bool (rows, columns), on the planar image ``reference``."""
    return {n: m[:, 0, :] for n, m in masks_from_segmentation(segmentation_node, reference).items()}


def planar_view_nodes(scene) -> Dict[str, Tuple[Any, Any]]:
    """``{session (ISO 8601): (volume, segmentation)}`` of the planar views in the scene (the last of each)."""
    found: Dict[str, list] = {}
    for class_name, slot in (("vtkMRMLScalarVolumeNode", 0), ("vtkMRMLSegmentationNode", 1)):
        for k in range(scene.GetNumberOfNodesByClass(class_name)):
            node = scene.GetNthNodeByClass(k, class_name)
            session = node.GetAttribute(PLANAR_SESSION_ATTRIBUTE)
            if session:
                found.setdefault(session, [None, None])[slot] = node
    return {session: (pair[0], pair[1]) for session, pair in found.items()}


# ------------------------------------------------------------------------------------- whole studies

def add_results(scene, results, *, name_prefix: str = "LuDosimetry", parent_item: Optional[int] = None,
                table_columns: Optional[Sequence[Tuple[str, str]]] = None,
                colors: Optional[Mapping[str, Sequence[float]]] = None) -> Dict[str, Any]:
    """Add a run's reference SPECT, dose, TIA, results table, DVH and TAC charts under the study.

    Returns
    -------
    dict
        ``{"study_item", "spect", "dose", "tia", "table", "dvh_chart", "tac_chart", "whole_body_table"}`` (the
        last None when the run has no whole-body quantity).
    """
    if parent_item is None:
        parent_item = study_item(scene, results.patient_id, results.patient_name, results.study_instance_uid,
                                 "Dosimetry")
    ref = next((tp.index for tp in results.time_points
                if tp.spect_series_uid and results.reference_spect is not None), None)
    nodes: Dict[str, Any] = {"study_item": parent_item, "spect": None}
    if results.reference_spect is not None:
        nodes["spect"] = add_volume(scene, results.reference_spect, f"{name_prefix} SPECT (Bq per mL)",
                                    parent_item=parent_item, time_point=ref, attributes={"LuDosimetry.Units": "Bq/mL"})
    nodes["dose"] = add_volume(scene, results.dose_gy, f"{name_prefix} dose (Gy)", parent_item=parent_item,
                               color_node_id="vtkMRMLColorTableNodeRainbow", attributes={"LuDosimetry.Units": "Gy"})
    nodes["tia"] = add_volume(scene, results.tia_bq_s_per_ml, f"{name_prefix} TIA (Bq s per mL)",
                              parent_item=parent_item, color_node_id="vtkMRMLColorTableNodeRainbow",
                              attributes={"LuDosimetry.Units": "Bq*s/mL"})
    nodes["table"] = add_results_table(scene, results, f"{name_prefix} results", columns=table_columns,
                                       parent_item=parent_item)
    nodes["dvh_chart"] = add_dvh_chart(scene, results, f"{name_prefix} DVH", colors=colors, parent_item=parent_item)
    nodes["tac_chart"] = add_tac_chart(scene, results, f"{name_prefix} TAC", colors=colors, parent_item=parent_item)
    nodes["whole_body_table"] = add_whole_body_table(scene, results, f"{name_prefix} whole body",
                                                     parent_item=parent_item)
    return nodes


def add_time_points(scene, inventory, *, injection_time=None, spect_series_uids: Optional[Sequence[str]] = None,
                    supersample: int = 3, parent_item: Optional[int] = None,
                    with_ct: bool = True, progress=None) -> List[Dict[str, Any]]:
    """Load each time point of an inventory: its SPECT (Bq/mL), CT and one segmentation of all its
    RTSTRUCT ROIs on the SPECT grid.

    Parameters
    ----------
    inventory : LuDosimetryLib.io.inventory.Inventory
    spect_series_uids : sequence of str, optional
        The SPECT series per time point (e.g. ``[tp.spect_series_uid for tp in results.time_points]``);
        the first of each time point by default.

    Returns
    -------
    list of dict
        Per time point ``{"index", "spect", "ct", "segmentation", "spect_image"}`` (nodes may be None).
    """
    from ..io.images import read_ct, read_spect
    from ..io.rtstruct import read_rtstruct
    from ..progress import as_progress
    from ..vois import structure_set_masks

    progress = as_progress(progress)
    first = inventory.series[0] if inventory.series else None
    if parent_item is None:
        parent_item = study_item(scene, first.patient_id if first else "", "",
                                 first.study_instance_uid if first else "", "Dosimetry")
    out = []
    n = max(len(inventory.time_points), 1)
    for k, tp in enumerate(inventory.time_points):
        progress.report(k / n, f"loading time point {k + 1}")
        uid = spect_series_uids[k] if spect_series_uids else tp.spect_series_uids[0]
        entry = inventory.get(uid)
        spect = read_spect(entry.files, injection_time=injection_time or inventory.injection_time,
                           what=f"SPECT {entry.description or uid}")
        hours = inventory.hours_post_injection(spect.acquisition_time)
        label = f"TP{k + 1}" + (f" {hours:.1f} h" if hours is not None else "")
        item: Dict[str, Any] = {"index": k, "spect_image": spect.image, "ct": None, "segmentation": None}
        item["spect"] = add_volume(scene, spect.image, f"{label} SPECT (Bq per mL)", parent_item=parent_item,
                                   time_point=k, attributes={"LuDosimetry.Units": "Bq/mL",
                                                             "DICOM.SeriesInstanceUID": uid})
        if with_ct:
            cts = [s for s in inventory.by_role("ct") if s.time_point == k
                   and (not spect.frame_of_reference_uid or s.frame_of_reference_uid == spect.frame_of_reference_uid)]
            if cts:
                item["ct"] = add_volume(scene, read_ct(cts[0].files, what=f"CT {cts[0].description}"),
                                        f"{label} CT (HU)", parent_item=parent_item, time_point=k,
                                        attributes={"DICOM.SeriesInstanceUID": cts[0].series_instance_uid})
        masks: Dict[str, np.ndarray] = {}
        colors: Dict[str, Tuple[int, int, int]] = {}
        for entry_ss in [s for s in inventory.by_role("rtstruct") if s.time_point == k]:
            for path in entry_ss.files:
                ss = read_rtstruct(path)
                for roi_name, mask in structure_set_masks(ss, spect.image, supersample=supersample).items():
                    if roi_name in masks:
                        raise StructureError(f"ROI {roi_name!r} is defined twice at time point {k + 1}", path)
                    masks[roi_name] = mask >= 0.5
                for roi in ss.rois:
                    if roi.color is not None and roi.name in masks:
                        colors.setdefault(roi.name, roi.color)
        if masks:
            item["segmentation"] = add_segmentation(scene, masks, spect.image, f"{label} VOIs", colors=colors,
                                                    parent_item=parent_item, time_point=k,
                                                    reference_volume=item["spect"])
        out.append(item)
    progress.report(1.0, "time points loaded")
    return out


def _spect_images_of(results, indices: Sequence[int]) -> Dict[int, sitk.Image]:
    """The SPECT (Bq/mL) of time points ``indices`` of a run, read again from its inventory."""
    from ..io.images import read_spect

    inventory = getattr(results, "inventory", None)
    if inventory is None:
        raise LuDosimetryError("the results hold no study inventory to read the time points' SPECT from")
    out: Dict[int, sitk.Image] = {}
    for i in indices:
        uid = results.time_points[i].spect_series_uid
        entry = inventory.get(uid)
        out[i] = read_spect(entry.files, injection_time=results.injection_time,
                            what=f"SPECT {entry.description or uid}").image
    return out


def add_registered_spects(scene, results, spect_images: Optional[Mapping[int, sitk.Image]] = None, *,
                          parent_item: Optional[int] = None, reference_volume=None,
                          name_prefix: str = "LuDosimetry") -> Dict[int, Any]:
    """The registration check view: each registered time point's SPECT carried to the reference grid.

    For every ``i`` in ``results.registrations`` the time point's SPECT (Bq/mL, on its own grid) is
    resampled onto ``results.reference_spect`` through ``results.registrations[i].apply_to_image`` and
    added as a scalar volume; shown over the reference SPECT it tells whether the time points line up.

    Parameters
    ----------
    results : LuDosimetryLib.pipeline.StudyResults
        A run with a registration (``results.registrations`` non-empty; nothing is added otherwise).
    spect_images : mapping of int to SimpleITK.Image, optional
        The time points' SPECT images (e.g. the ``spect_image`` of :func:`add_time_points`); those not
        given are read again from ``results.inventory`` (Lu-177, no calibration factor: for viewing).
    parent_item : int, optional
        Subject-hierarchy item to put the volumes under.
    reference_volume : vtkMRMLScalarVolumeNode, optional
        The reference SPECT in the scene (e.g. ``add_results(...)["spect"]``); referenced from each new
        volume with the role :data:`REFERENCE_VOLUME_ROLE`, so that the pair is found again after the
        scene is saved and loaded.

    Returns
    -------
    dict
        ``{time point index (0-based): vtkMRMLScalarVolumeNode}``. Each node carries the attributes
        :data:`REGISTERED_TIME_POINT_ATTRIBUTE` and :data:`REFERENCE_TIME_POINT_ATTRIBUTE`.
    """
    registrations = dict(getattr(results, "registrations", None) or {})
    if not registrations:
        return {}
    reference = results.reference_spect
    if reference is None:
        raise LuDosimetryError("the results hold no reference SPECT to carry the time points to")
    ref = int(getattr(results, "reference_index", 0))
    given = dict(spect_images or {})
    missing = [i for i in sorted(registrations) if given.get(i) is None]
    if missing:
        given.update(_spect_images_of(results, missing))
    nodes: Dict[int, Any] = {}
    for i in sorted(registrations):
        moved = registrations[i].apply_to_image(given[i], reference)
        node = add_volume(scene, moved, f"{name_prefix} TP{i + 1} SPECT on TP{ref + 1} (registered, Bq per mL)",
                          parent_item=parent_item,
                          attributes={"LuDosimetry.Units": "Bq/mL", REGISTERED_TIME_POINT_ATTRIBUTE: str(i),
                                      REFERENCE_TIME_POINT_ATTRIBUTE: str(ref)})
        if reference_volume is not None:
            node.SetNodeReferenceID(REFERENCE_VOLUME_ROLE, reference_volume.GetID())
        nodes[i] = node
    return nodes


def registered_spect_nodes(scene) -> Dict[int, Any]:
    """``{time point: node}`` of the registered SPECT volumes in a scene (made by
    :func:`add_registered_spects`; the last one in the scene where several carry the same time point)."""
    out: Dict[int, Any] = {}
    for k in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(k, "vtkMRMLScalarVolumeNode")
        value = node.GetAttribute(REGISTERED_TIME_POINT_ATTRIBUTE)
        try:
            out[int(value)] = node
        except (TypeError, ValueError):
            continue
    return out


# ------------------------------------------------------------------------------------- edited VOIs out

def referenced_series_for(entry, image: sitk.Image):
    """:class:`~LuDosimetryLib.io.rtstruct.ReferencedSeries` of an image series: one SOP instance per
    z slice of ``image`` (slices ordered along the slice normal as the reader orders them; a
    multi-frame file is referenced once per slice)."""
    import pydicom

    from ..io.rtstruct import ReferencedSeries

    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in entry.files]
    nz = image.GetSize()[2]
    if len(headers) == 1:
        uids = [str(headers[0].SOPInstanceUID)] * nz
    else:
        normal = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)[:, 2]
        ordered = sorted(headers, key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal)))
        uids = [str(ds.SOPInstanceUID) for ds in ordered]
        if len(uids) != nz:
            raise StructureError(f"series {entry.series_instance_uid} has {len(uids)} files for {nz} slices",
                                 entry.files[0])
    first = headers[0]
    return ReferencedSeries(study_instance_uid=str(first.StudyInstanceUID),
                            series_instance_uid=str(first.SeriesInstanceUID),
                            frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
                            sop_class_uid=str(first.SOPClassUID), sop_instance_uids=uids)


def _patient_study_from(path):
    from datetime import datetime

    import pydicom

    from ..io.dicom_common import PatientInfo, StudyInfo

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    try:
        when = datetime.strptime(str(ds.get("StudyDate", "")) + str(ds.get("StudyTime", "000000")).split(".")[0][:6],
                                 "%Y%m%d%H%M%S")
    except ValueError:
        when = datetime.now()
    patient = PatientInfo(patient_id=str(ds.get("PatientID", "ANON")), patient_name=str(ds.get("PatientName", "")),
                          birth_date=str(ds.get("PatientBirthDate", "")), sex=str(ds.get("PatientSex", "")))
    study = StudyInfo(study_instance_uid=str(ds.StudyInstanceUID), study_datetime=when,
                      study_id=str(ds.get("StudyID", "")), description=str(ds.get("StudyDescription", "")),
                      accession_number=str(ds.get("AccessionNumber", "")))
    return patient, study


def export_masks_rtstruct(path, masks: Mapping[str, np.ndarray], reference: sitk.Image, entry, *,
                          colors: Optional[Mapping[str, Sequence[int]]] = None, label: str = "Edited VOIs",
                          series_description: str = "LuDosimetry edited VOIs") -> Path:
    """Write masks on the grid of image series ``entry`` (an inventory SeriesEntry whose image is
    ``reference``) as a NEW RTSTRUCT drawn on that series; an existing ``path`` is refused."""
    from ..io.rtstruct import write_rtstruct

    path = Path(path)
    if path.exists():
        raise OutputError("exists; an RTSTRUCT is never overwritten (choose a new file name)", path)
    referenced = referenced_series_for(entry, reference)
    patient, study = _patient_study_from(entry.files[0])
    int_colors = {k: tuple(int(c) for c in v) for k, v in (colors or {}).items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty segments are written without contours, as documented
        return write_rtstruct(path, {k: np.asarray(m, dtype=np.float32) for k, m in masks.items()}, reference,
                              referenced, patient, study, colors=int_colors, label=label,
                              series_description=series_description)


def export_segmentation_rtstruct(segmentation_node, path, reference: sitk.Image, entry, *,
                                 label: str = "Edited VOIs") -> Path:
    """Export a (possibly edited) segmentation as a NEW RTSTRUCT on the image series ``entry``.

    Parameters
    ----------
    segmentation_node : vtkMRMLSegmentationNode
    path : path-like
        New file; refused when it exists (the original RTSTRUCT is never overwritten).
    reference : SimpleITK.Image
        Image of ``entry`` (e.g. the time point's SPECT); segments are resampled onto it.
    entry : LuDosimetryLib.io.inventory.SeriesEntry
        The series the contours reference.
    """
    masks = masks_from_segmentation(segmentation_node, reference)
    return export_masks_rtstruct(path, masks, reference, entry, colors=segment_colors(segmentation_node),
                                 label=label)


def write_working_study(inventory, masks_per_time_point: Sequence[Mapping[str, np.ndarray]],
                        references: Sequence[sitk.Image], spect_series_uids: Sequence[str], work_dir,
                        colors: Optional[Mapping[str, Sequence[int]]] = None, link: bool = True) -> Path:
    """A working copy of a study for a recompute with edited VOIs.

    ``work_dir/images/`` holds links (or copies, when links are not possible or ``link`` is False) to
    every original file except the RTSTRUCTs; ``work_dir/vois/TP<k>_edited_VOIs.dcm`` holds the masks of
    time point k as a new RTSTRUCT drawn on that time point's SPECT series. The original folder is not
    touched. :func:`LuDosimetryLib.pipeline.run_study` on ``work_dir`` then uses the edited VOIs.

    Parameters
    ----------
    masks_per_time_point : sequence of mapping
        Per time point, ``{VOI name: (z, y, x) mask on references[k]}``.
    references : sequence of SimpleITK.Image
        Per time point, the SPECT image the masks are on.
    spect_series_uids : sequence of str
        Per time point, the SPECT series (in ``inventory``) the RTSTRUCT references.
    work_dir : path-like
        Created; must not exist or be empty.

    Returns
    -------
    pathlib.Path
        ``work_dir``.
    """
    work = Path(work_dir)
    if work.exists() and (not work.is_dir() or any(work.iterdir())):
        raise OutputError("exists and is not an empty folder; the working copy needs a new folder", work)
    if not (len(masks_per_time_point) == len(references) == len(spect_series_uids)):
        raise LuDosimetryError("one mask set, reference image and SPECT series per time point are needed")
    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    k = 0
    for series in inventory.series:
        if series.role == "rtstruct":
            continue
        for f in series.files:
            k += 1
            target = images / f"{k:06d}_{Path(f).name}"
            if link:
                try:
                    os.symlink(os.path.abspath(f), target)
                    continue
                except OSError:
                    pass
            shutil.copy2(f, target)
    vois = work / "vois"
    vois.mkdir(exist_ok=True)
    for i, (masks, reference, uid) in enumerate(zip(masks_per_time_point, references, spect_series_uids)):
        export_masks_rtstruct(vois / f"TP{i + 1}_edited_VOIs.dcm", masks, reference, inventory.get(uid),
                              colors=colors, label=f"TP{i + 1} edited")
    return work


# ------------------------------------------------------------------------------------------- saving

def save_mrb(scene, path) -> Path:
    """Save the scene with its data as a Medical Reality Bundle (``.mrb``, a zip with the ``.mrml`` and
    the node files), written atomically. Nodes without a storage node get their default one.

    Raises
    ------
    OutputError
        The bundle cannot be written.
    """
    path = Path(path)
    if path.suffix.lower() != ".mrb":
        raise OutputError("a scene bundle must end in .mrb", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for k in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(k)
        if node.IsA("vtkMRMLStorableNode") and node.GetStorageNode() is None and hasattr(node, "CreateDefaultStorageNode"):
            node.AddDefaultStorageNode() if hasattr(node, "AddDefaultStorageNode") else node.CreateDefaultStorageNode()
    # The bundle's inner folder is named after the file, so write it under its final name in a
    # temporary folder beside the target, then move it into place.
    tmp_dir = tempfile.mkdtemp(prefix=".ludosimetry-mrb-", dir=str(path.parent))
    try:
        tmp = os.path.join(tmp_dir, path.name)
        if not scene.WriteToMRB(tmp) or not os.path.isfile(tmp):
            raise OutputError("the scene could not be written as a bundle", path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def load_mrb(path, scene=None):
    """Read an ``.mrb`` into ``scene`` (a new :func:`create_scene` scene by default) and return the scene."""
    path = Path(path)
    scene = scene if scene is not None else create_scene()
    if not path.is_file() or not scene.ReadFromMRB(str(path)):
        raise LuDosimetryError("cannot be read as a scene bundle", path)
    return scene
