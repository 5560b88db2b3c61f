"""A dosimetry session on a 3D Slicer scene: run, load, recompute with edited VOIs, export, DICOM database.

:class:`DosimetrySession` is what the Slicer module's logic delegates to, and what headless scripts and
tests use directly (in Slicer on ``slicer.mrmlScene``, in plain Python on a scene of
:func:`LuDosimetryLib.mrml.nodes.create_scene` with PyPI's ``slicer-core``). It takes plain values — a
:class:`~LuDosimetryLib.options.RunOptions`, paths — never the Slicer parameter node or a widget, and it
computes nothing itself: :func:`~LuDosimetryLib.pipeline.run_study` computes, :mod:`.nodes` makes the nodes.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import OutputError, StudyError
from ..options import RunOptions, replace_options
from ..result_tables import result_columns_for
from ..report import DVH_FILE, REPORT_HTML_FILE, REPORT_PDF_FILE, RESULTS_FILE, RTDOSE_FILE, VOI_RESULTS_FILE
from . import nodes

ProgressCallback = Callable[[float, str], None]

#: Fraction of the progress range given to run_study; writing the outputs and the scene get the rest.
RUN_STUDY_SHARE = 0.9

#: What the panel's "Export report" writes: the per-patient report and the results it is made from.
REPORT_EXPORT_FILES = (REPORT_HTML_FILE, REPORT_PDF_FILE, RESULTS_FILE)


# ----------------------------------------------------------------------------------- folder conventions

def default_output_dir(study_dir) -> Path:
    """The output folder proposed for a study: ``<study folder>-dosimetry`` beside it."""
    study = Path(study_dir)
    return study.with_name(study.name + "-dosimetry")


def edited_output_dir(out_dir) -> Path:
    """The output folder of a recompute with edited VOIs: ``<output folder>-edited`` beside it."""
    out = Path(out_dir)
    return out.with_name(out.name + "-edited")


def reconstruction_dir(out_dir) -> Path:
    """Where the panel's reconstructions go: ``<output folder>-recon`` beside the output folder."""
    out = Path(out_dir)
    return out.with_name(out.name + "-recon")


def planar_regions_dir(out_dir) -> Path:
    """Where the panel saves the planar regions edited in its planar view, for a run into ``out_dir``:
    ``<output folder>-planar-regions`` beside it (the run reads them with ``--planar-regions``)."""
    out = Path(out_dir)
    return out.with_name(out.name + "-planar-regions")


def safe_folder_name(text: str) -> str:
    """A folder name made of the letters, digits, '-', '_' and '.' of ``text`` (others become '_')."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text)).strip("._")
    return name or "study"


def _quiet(fraction: float, message: str) -> None:
    return None


def _required(value, what: str, error=StudyError):
    if value is None or not str(value).strip():
        raise error(f"no {what} chosen")
    return Path(value)


# ------------------------------------------------------------------------------------------ the session

#: The options a study scan (:meth:`DosimetrySession.inventory`) reads.
INVENTORY_OPTIONS = ("injected_activity_bq", "injection_time", "extra_study_dirs")


class DosimetrySession:
    """Runs the pipeline on a scene and keeps what the panel needs between calls.

    After :meth:`run`: :attr:`last_nodes` holds the nodes it added (empty when none), :attr:`last_results`
    the results, :attr:`last_output_dir` the folder written, :attr:`time_point_items` the per-time-point
    nodes (SPECT, CT, segmentation) when the study was loaded, and :attr:`registration_nodes` the
    registration check view (``{time point: SPECT carried to the reference grid}``). After
    :meth:`cycle_summary`: :attr:`cycles_table_node` its table in the scene.

    Parameters
    ----------
    scene : vtkMRMLScene, optional
        The scene to fill; None runs without a scene (files only).
    """

    def __init__(self, scene=None) -> None:
        self.scene = scene
        self.last_nodes: Dict[str, Any] = {}
        self.last_results = None
        self.last_output_dir: Optional[Path] = None
        self.time_point_items: List[Dict[str, Any]] = []
        self.registration_nodes: Dict[int, Any] = {}
        self.cycles_table_node = None
        self.planar_view_nodes: Dict[int, Tuple[Any, Any]] = {}

    def forget_scene_nodes(self) -> None:
        """Drop the references to nodes of a scene that was closed."""
        self.last_nodes = {}
        self.time_point_items = []
        self.registration_nodes = {}
        self.cycles_table_node = None
        self.planar_view_nodes = {}

    # ---------------------------------------------------------------------------------- study

    @staticmethod
    def inventory(study_dir, options: Optional[RunOptions] = None):
        """The study's inventory (time points, series, roles, hours after injection) for the panel.

        Only the options of :data:`INVENTORY_OPTIONS` are read: a study can be scanned while other options
        are still being set."""
        from ..io.inventory import scan_study

        options = options or RunOptions()
        return scan_study(_required(study_dir, "study folder"), injected_activity_bq=options.injected_activity_bq,
                          injection_time=options.injection_time, extra_roots=tuple(options.extra_study_dirs))

    @staticmethod
    def voi_names(inventory, reference_time_point: int = 0) -> List[str]:
        """The ROI names of the study's RTSTRUCTs at the reference time point (0-based; all time points'
        when it has none), in file order, named as the run names its VOIs; unreadable files are skipped
        (the run reports them)."""
        from ..errors import LuDosimetryError
        from ..io.rtstruct import read_rtstruct

        structure_sets = list(inventory.by_role("rtstruct"))
        at_reference = [s for s in structure_sets if s.time_point == int(reference_time_point)]
        names: List[str] = []
        for entry in at_reference or structure_sets:
            for path in entry.files:
                try:
                    rois = read_rtstruct(path).rois
                except LuDosimetryError:
                    continue
                names.extend(roi.name for roi in rois if roi.name not in names)
        return names

    # ------------------------------------------------------------------------------------ run

    def run(self, study_dir, out_dir, options: Optional[RunOptions] = None, *, overwrite: bool = False,
            progress: Optional[ProgressCallback] = None, load_into_scene: Optional[bool] = None,
            load_time_points: bool = False, **option_values):
        """Compute the dosimetry of one study, write the outputs and (with a scene) show them.

        Parameters
        ----------
        study_dir, out_dir : path-like
            The DICOM study folder and the folder for the outputs of
            :func:`LuDosimetryLib.pipeline.write_outputs`.
        options : RunOptions, optional
            The run's options; ``option_values`` (RunOptions fields, library units) change some of them.
        overwrite : bool
            Replace an earlier LuDosimetry output in ``out_dir``.
        progress : callable, optional
            ``progress(fraction, message)``; raising :class:`~LuDosimetryLib.errors.CancelledError` cancels.
        load_into_scene : bool, optional
            Add the volumes, the table and the charts to the scene; by default whenever there is a scene.
        load_time_points : bool
            Also load each time point's SPECT, CT and VOIs (one segmentation per time point, for editing).
            After a run with a registration, each registered time point's SPECT on the reference grid is
            added too (:attr:`registration_nodes`, the check view).

        Returns
        -------
        StudyResults

        Raises
        ------
        LuDosimetryError
            A problem with the inputs or the options (one line naming the file or option).
        """
        from ..io.export import check_output_dir, check_output_outside_inputs
        from ..pipeline import run_study, write_outputs

        study_dir = _required(study_dir, "study folder")
        out_dir = _required(out_dir, "output folder", OutputError)
        options = replace_options(options or RunOptions(), **option_values)
        check_output_dir(out_dir, overwrite)  # refused before the long computation
        check_output_outside_inputs(out_dir, [study_dir, *options.extra_study_dirs])
        report = progress or _quiet

        self.last_nodes = {}
        self.registration_nodes = {}
        self.planar_view_nodes = {}  # the new run's views are loaded from its folder
        results = run_study(study_dir, options,
                            progress=lambda fraction, message: report(RUN_STUDY_SHARE * fraction, message))
        report(RUN_STUDY_SHARE, "Writing the results")
        write_outputs(results, out_dir, overwrite=overwrite)
        self.last_results = results
        self.last_output_dir = out_dir

        if load_into_scene is None:
            load_into_scene = self.scene is not None
        if load_into_scene:
            report(0.95, "Adding the results to the scene")
            self.last_nodes = nodes.add_results(self.scene, results, name_prefix="LuDosimetry",
                                                table_columns=result_columns_for(results.vois))
            spect_images = {}
            if load_time_points and results.inventory is not None:
                items = self.load_time_points(results, parent_item=self.last_nodes.get("study_item"))
                spect_images = {item["index"]: item.get("spect_image") for item in items}
            if results.registrations:
                report(0.97, "Registration check view")
                self.add_registration_check(results, spect_images)
        report(1.0, "Done")
        return results

    def load_time_points(self, results, parent_item: Optional[int] = None) -> List[Dict[str, Any]]:
        """Load each time point's SPECT, CT and VOIs (one segmentation per time point) of a run."""
        self.time_point_items = nodes.add_time_points(
            self.scene, results.inventory, injection_time=results.injection_time,
            spect_series_uids=[tp.spect_series_uid for tp in results.time_points], parent_item=parent_item)
        return self.time_point_items

    # ----------------------------------------------------------------------------- registration

    def add_registration_check(self, results, spect_images: Optional[Dict[int, Any]] = None) -> Dict[int, Any]:
        """Add each registered time point's SPECT carried to the reference grid (the check view).

        ``spect_images`` (``{time point: SimpleITK SPECT}``) are images already read; the others are read
        again. Returns ``{time point (0-based): volume node}``, also kept in :attr:`registration_nodes`.
        """
        self.registration_nodes = nodes.add_registered_spects(
            self.scene, results, spect_images, parent_item=self.last_nodes.get("study_item"),
            reference_volume=self.last_nodes.get("spect"))
        return self.registration_nodes

    def registered_spect_nodes(self) -> Dict[int, Any]:
        """The registration check view's volumes: the last run's, else those found in the scene (e.g.
        after a .mrb was loaded). ``{time point (0-based): volume node}``."""
        if self.registration_nodes:
            return dict(self.registration_nodes)
        if self.scene is None:
            return {}
        return nodes.registered_spect_nodes(self.scene)

    def registration_check_layers(self, time_point: int) -> Tuple[Any, Any]:
        """``(background, foreground)`` of the check view for ``time_point`` (0-based): the reference SPECT and
        that time point's SPECT carried to the reference grid.

        Raises
        ------
        StudyError
            The time point has no registered SPECT (no registration run, or it is the reference).
        """
        found = self.registered_spect_nodes()
        foreground = found.get(int(time_point))
        if foreground is None:
            if not found:
                raise StudyError("no registered time point: run the dosimetry with a rigid or deformable "
                                 "registration first")
            reference = next(iter(found.values())).GetAttribute(nodes.REFERENCE_TIME_POINT_ATTRIBUTE)
            raise StudyError(f"time point {int(time_point) + 1} has no registered SPECT (registered: "
                             f"{', '.join(str(k + 1) for k in sorted(found))}; the reference is "
                             f"{int(reference) + 1 if reference not in (None, '') else '?'})")
        background = foreground.GetNodeReference(nodes.REFERENCE_VOLUME_ROLE)
        if background is None:
            background = self.last_nodes.get("spect")
        return background, foreground

    # ------------------------------------------------------------------------------------- VOIs

    def segmentation_nodes_by_time_point(self) -> List[Any]:
        """The VOI segmentation of each time point (None where a time point has none): those this session
        loaded, else (e.g. after a .mrb was loaded) the scene's segmentations marked with a time point."""
        if self.time_point_items:
            return [item.get("segmentation") for item in self.time_point_items]
        if self.scene is None:
            return []
        found = nodes.nodes_by_time_point(self.scene, "vtkMRMLSegmentationNode")
        if not found:
            return []
        return [found.get(k) for k in range(max(found) + 1)]

    def set_segmentation_for_time_point(self, time_point: int, segmentation_node) -> None:
        """Use ``segmentation_node`` as the VOIs of time point ``time_point`` (0-based); recorded in the scene
        (the node's time-point attribute; other segmentations lose that time point)."""
        current = self.segmentation_nodes_by_time_point()
        limit = len(current) if current else 10
        if not 0 <= int(time_point) < limit:
            raise StudyError(f"time point {int(time_point) + 1} does not exist (the study has {len(current)})")
        nodes.set_time_point(segmentation_node, int(time_point), exclusive_class="vtkMRMLSegmentationNode")
        if self.time_point_items:
            self.time_point_items[int(time_point)]["segmentation"] = segmentation_node

    @staticmethod
    def source_volume_for_segmentation(segmentation_node):
        """The volume a segmentation is drawn on (its reference-geometry volume), or None."""
        return segmentation_node.GetNodeReference("referenceImageGeometryRef") if segmentation_node else None

    def _spect_of_time_point(self, inventory, options: RunOptions, time_point: int):
        from ..io.images import read_spect
        from ..pipeline import choose_spect_series

        entry = choose_spect_series(inventory, options)[time_point]
        spect = read_spect(entry.files, injection_time=inventory.injection_time,
                           what=f"SPECT {entry.description or entry.series_instance_uid}")
        return entry, spect

    def edited_voi_masks(self, study_dir, segmentation_nodes: Sequence[Any], options: Optional[RunOptions] = None,
                         progress: Optional[ProgressCallback] = None) -> List[Dict[str, Any]]:
        """The segmentations as VOI masks on each time point's SPECT grid (``RunOptions.masks_per_time_point``).

        Raises
        ------
        StudyError
            Not one segmentation per time point.
        """
        options = options or RunOptions()
        report = progress or _quiet
        inventory = self.inventory(study_dir, options)
        segmentations = list(segmentation_nodes)
        if len(segmentations) != len(inventory.time_points) or any(node is None for node in segmentations):
            raise StudyError(f"{len(inventory.time_points)} time points need one segmentation each "
                             f"(got {sum(node is not None for node in segmentations)})", study_dir)
        masks = []
        for k, node in enumerate(segmentations):
            report(k / len(segmentations), f"Reading the VOIs of time point {k + 1}")
            _, spect = self._spect_of_time_point(inventory, options, k)
            masks.append(nodes.masks_from_segmentation(node, spect.image))
        return masks

    def recompute_with_edited_vois(self, study_dir, segmentation_nodes: Sequence[Any], out_dir,
                                   options: Optional[RunOptions] = None, *, overwrite: bool = False,
                                   progress: Optional[ProgressCallback] = None,
                                   load_into_scene: Optional[bool] = None, **option_values):
        """Rerun the dosimetry with the (edited) segmentations as VOIs.

        The segments become masks on each time point's SPECT grid and go to the pipeline directly
        (``RunOptions.masks_per_time_point``); the study's RTSTRUCTs are not used and nothing is written
        besides the outputs (:meth:`export_segmentation_as_rtstruct` writes an RTSTRUCT of edited VOIs).

        Parameters
        ----------
        segmentation_nodes : sequence of vtkMRMLSegmentationNode
            One per time point, in time-point order, all with the same segment names.
        options, option_values
            As for :meth:`run`.
        """
        from ..io.export import check_output_dir

        out_dir = _required(out_dir, "output folder", OutputError)
        options = replace_options(options or RunOptions(), **option_values)
        check_output_dir(out_dir, overwrite)
        report = progress or _quiet
        masks = self.edited_voi_masks(study_dir, segmentation_nodes, options,
                                      progress=lambda fraction, message: report(0.1 * fraction, message))
        return self.run(study_dir, out_dir, replace_options(options, masks_per_time_point=masks),
                        overwrite=overwrite, load_into_scene=load_into_scene,
                        progress=lambda fraction, message: report(0.1 + 0.9 * fraction, message))

    def export_segmentation_as_rtstruct(self, segmentation_node, path, time_point: int, study_dir=None,
                                        options: Optional[RunOptions] = None) -> Path:
        """Write one time point's (edited) segmentation as a NEW RTSTRUCT file drawn on its SPECT."""
        options = options or RunOptions()
        if study_dir is None and self.last_results is not None:
            study_dir = self.last_results.inventory.root
        inventory = self.inventory(study_dir, options)
        entry, spect = self._spect_of_time_point(inventory, options, int(time_point))
        return nodes.export_segmentation_rtstruct(segmentation_node, path, spect.image, entry)

    # ----------------------------------------------------------------------------- planar view (#14)

    def planar_session_count(self, out_dir=None) -> int:
        """The planar sessions whose view a run wrote into ``out_dir`` (default: the last run's folder)."""
        from ..output_layout import planar_regions_file

        folder = self._output_folder(out_dir)
        count = 0
        while (folder / planar_regions_file(count + 1)).is_file():
            count += 1
        return count

    def _output_folder(self, out_dir) -> Path:
        folder = out_dir if out_dir is not None else self.last_output_dir
        return _required(folder, "output folder", OutputError)

    def show_planar_view(self, session_number: int, out_dir=None) -> Tuple[Any, Any]:
        """Load planar session ``session_number``'s (1-based) image and VOI regions written by a run into
        ``out_dir`` (:func:`LuDosimetryLib.io.planar.write_planar_view`) as a volume and a segmentation drawn on
        it, once per session (later calls give the same nodes, with their edits).

        Returns
        -------
        (vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode)

        Raises
        ------
        OutputError
            The folder has no planar view of that session.
        """
        import SimpleITK as sitk

        from ..io.planar import read_planar_regions
        from ..output_layout import planar_image_file, planar_regions_file

        number = int(session_number)
        known = self.planar_view_nodes.get(number)
        if known is not None and all(node is not None and node.GetScene() is self.scene for node in known):
            return known
        folder = self._output_folder(out_dir)
        image_path, regions_path = folder / planar_image_file(number), folder / planar_regions_file(number)
        if not image_path.is_file() or not regions_path.is_file():
            raise OutputError(f"no planar view of session {number} (a run with planar whole-body images writes "
                              f"{planar_image_file(number)})", folder)
        regions, _grid, session = read_planar_regions(regions_path)
        self.planar_view_nodes[number] = nodes.add_planar_view(
            self.scene, sitk.ReadImage(str(image_path)), regions, session or "",
            f"LuDosimetry planar session {number}", parent_item=self.last_nodes.get("study_item"))
        return self.planar_view_nodes[number]

    def save_planar_regions(self, folder, overwrite: bool = False) -> List[Path]:
        """Write the regions of every planar view shown (:meth:`show_planar_view`; edited or not) into
        ``folder``, one file per session as ``--planar-regions`` reads them, each atomically.

        Raises
        ------
        OutputError
            No planar view shown, or a file exists and ``overwrite`` is False.
        """
        from ..io.export import atomic_file
        from ..io.planar import SESSION_FIELD
        from ..io.voi_masks import write_voi_masks
        from ..output_layout import planar_regions_file

        shown = {k: pair for k, pair in sorted(self.planar_view_nodes.items()) if all(n is not None for n in pair)}
        if not shown:
            raise OutputError("no planar view shown: show a planar session and edit its regions first")
        paths = [Path(folder) / Path(planar_regions_file(k)).name for k in shown]
        existing = [str(p) for p in paths if p.exists()]
        if existing and not overwrite:
            raise OutputError(f"would replace {', '.join(existing)}: allow overwriting", folder)
        for path, (volume, segmentation) in zip(paths, shown.values()):
            reference = nodes.image_from_volume_node(volume)
            regions = nodes.planar_regions_from_segmentation(segmentation, reference)
            cols, _one, rows = reference.GetSize()
            with atomic_file(path, ".nrrd") as tmp:
                write_voi_masks(tmp, {n: m.reshape(rows, 1, cols) for n, m in regions.items()}, reference,
                                {SESSION_FIELD: volume.GetAttribute(nodes.PLANAR_SESSION_ATTRIBUTE) or ""})
        return paths

    def recompute_with_edited_planar_regions(self, study_dir, out_dir, options: Optional[RunOptions] = None, *,
                                             overwrite: bool = False, progress: Optional[ProgressCallback] = None,
                                             load_into_scene: Optional[bool] = None, **option_values):
        """Rerun the dosimetry with the planar regions of the planar views shown (edited in the Segment Editor):
        they are saved into :func:`planar_regions_dir` of ``out_dir`` and passed as ``--planar-regions`` (a
        region equal to its projection changes nothing). Arguments as for :meth:`run`."""
        from ..io.export import check_output_dir

        out_dir = _required(out_dir, "output folder", OutputError)
        options = replace_options(options or RunOptions(), **option_values)
        check_output_dir(out_dir, overwrite)
        files = self.save_planar_regions(planar_regions_dir(out_dir), overwrite=overwrite)
        return self.run(study_dir, out_dir, replace_options(options, planar_regions=tuple(str(f) for f in files)),
                        overwrite=overwrite, load_into_scene=load_into_scene, progress=progress)

    def whole_body_rows(self, results=None) -> List[List[Any]]:
        """The panel's whole-body table of a run (default the last): a title row, then whole body, remainder
        of body and red marrow where the run has them (:func:`LuDosimetryLib.whole_body.summary_rows`)."""
        from ..whole_body import summary_rows

        results = results if results is not None else self.last_results
        if results is None:
            return summary_rows(None, None, None)
        return summary_rows(results.whole_body, results.remainder_of_body, results.red_marrow)

    # ----------------------------------------------------------------------------------- scene

    def chart_nodes(self) -> Tuple[Any, Any]:
        """``(TAC chart, DVH chart)`` of the last run, else the last ones in the scene (None when none)."""
        tac, dvh = self.last_nodes.get("tac_chart"), self.last_nodes.get("dvh_chart")
        if self.scene is None or (tac is not None and dvh is not None):
            return tac, dvh
        for k in range(self.scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode")):
            chart = self.scene.GetNthNodeByClass(k, "vtkMRMLPlotChartNode")
            name = chart.GetName() or ""
            stem, _, suffix = name.rpartition("_")
            base = stem if suffix.isdigit() else name  # unique names get "_<n>"
            if base.endswith(" TAC") and self.last_nodes.get("tac_chart") is None:
                tac = chart
            elif base.endswith(" DVH") and self.last_nodes.get("dvh_chart") is None:
                dvh = chart
        return tac, dvh

    def save_scene(self, path) -> Path:
        """Save the scene as a .mrb bundle (written atomically)."""
        return nodes.save_mrb(self.scene, path)

    # -------------------------------------------------------------------------------- DICOM database

    @staticmethod
    def dicom_studies(database) -> List[Dict[str, str]]:
        """The studies of a DICOM database (``slicer.dicomDatabase``), patient by patient:
        ``{"patient_id", "patient_name", "study_instance_uid", "study_date", "description", "label"}``, where
        ``label`` is the text of the panel's study list."""
        studies = []
        for patient in database.patients():
            name = str(database.nameForPatient(patient) or "").replace("^", " ").strip()
            patient_id = str(database.fieldForPatient("PatientID", patient) or "")
            for study in database.studiesForPatient(patient):
                date = str(database.fieldForStudy("StudyDate", study) or "")
                description = str(database.fieldForStudy("StudyDescription", study) or "")
                label = " / ".join(part for part in (name or patient_id, date, description) if part) or study
                studies.append({"patient_id": patient_id, "patient_name": name, "study_instance_uid": str(study),
                                "study_date": date, "description": description, "label": label})
        return studies

    @staticmethod
    def study_files_from_database(study_instance_uid: str, database) -> List[str]:
        """Every file of a study in a DICOM database (all its series); StudyError when it has none."""
        files: List[str] = []
        for series in database.seriesForStudy(study_instance_uid):
            files.extend(str(f) for f in database.filesForSeries(series))
        if not files:
            raise StudyError(f"study {study_instance_uid} has no files in the DICOM database")
        return files

    def study_view_from_database(self, study_instance_uid: str, database, view_dir=None) -> Path:
        """A study folder for a study of the DICOM database: links to its files in ``view_dir`` (a new temporary
        folder by default); the database's files are not changed. Scanned once to check it."""
        from ..io.study_view import make_study_view

        files = self.study_files_from_database(study_instance_uid, database)
        folder = Path(view_dir) if view_dir else Path(tempfile.mkdtemp(prefix="ludosimetry-study-"))
        make_study_view(files, folder)
        self.inventory(folder)
        return folder

    # ------------------------------------------------------------------------------- reconstruction

    def reconstruct(self, study_dir, recon_dir, recon_options=None, *, overwrite: bool = False,
                    progress: Optional[ProgressCallback] = None) -> Path:
        """Reconstruct the study's projections and return a study folder that uses the reconstructions.

        The reconstructions go into ``recon_dir``; then ``recon_dir/study`` is made: links to every file of
        the study except its reconstructed SPECT series, and links to the new reconstructions. The
        dosimetry runs on that folder.

        Raises
        ------
        OutputError
            ``recon_dir`` holds an earlier reconstruction and ``overwrite`` is False.
        """
        import shutil

        from ..io.study_view import make_study_view
        from ..options import ReconOptions, validate
        from ..recon import reconstruct_study

        recon_options = recon_options or ReconOptions()
        validate(recon_options)
        report = progress or _quiet
        recon_dir = Path(recon_dir)
        view = recon_dir / "study"
        if view.exists():
            if not overwrite:
                raise OutputError("holds an earlier reconstruction; allow {option} to replace it", recon_dir,
                                  option="overwrite")
            shutil.rmtree(str(view))
        inventory = self.inventory(study_dir)
        written = reconstruct_study(_required(study_dir, "study folder"), recon_dir, recon_options,
                                    progress=lambda fraction, message: report(0.95 * fraction, message),
                                    overwrite=overwrite)
        report(0.95, "Linking the reconstructions into a study folder")
        kept = [f for series in inventory.series if series.role != "spect_recon" for f in series.files]
        make_study_view(kept + [str(f) for f in written], view)
        report(1.0, "Reconstructed")
        return view

    # ------------------------------------------------------------------------------------- exports

    @staticmethod
    def run_file(out_dir, name: str) -> Path:
        """A file of a run's output folder; OutputError when there is none."""
        if out_dir is None or not str(out_dir).strip():
            raise OutputError(f"no output folder with a {name}; run the dosimetry first")
        path = Path(out_dir) / name
        if not path.is_file():
            raise OutputError(f"has no {name}; run the dosimetry first", Path(out_dir))
        return path

    def report_path(self, out_dir=None) -> Path:
        """The ``report.html`` of a run's output folder (the last run's by default): what "Open report" opens.

        Raises
        ------
        OutputError
            No output folder, or it has no report.
        """
        return self.run_file(self.last_output_dir if out_dir is None else out_dir, REPORT_HTML_FILE)

    def export_report(self, out_dir, folder, overwrite: bool = False) -> List[Path]:
        """Copy the run's report and results (:data:`REPORT_EXPORT_FILES`) into ``folder``; nothing is written
        when one of them exists there and ``overwrite`` is False. An output folder of an earlier version,
        without the report, gets it built from its files (:func:`~LuDosimetryLib.patient_report.report_files`;
        the output folder itself is not changed)."""
        from ..io.export import write_file_atomically

        folder = Path(folder)
        targets = [folder / name for name in REPORT_EXPORT_FILES]
        existing = [t for t in targets if t.exists()]
        if existing and not overwrite:
            raise OutputError("exists; not overwritten", existing[0])
        contents = {RESULTS_FILE: self.run_file(out_dir, RESULTS_FILE).read_bytes()}
        if all((Path(out_dir) / name).is_file() for name in (REPORT_HTML_FILE, REPORT_PDF_FILE)):
            contents.update({name: (Path(out_dir) / name).read_bytes() for name in (REPORT_HTML_FILE, REPORT_PDF_FILE)})
        else:
            from ..patient_report import report_files
            contents.update(report_files(out_dir))
        return [write_file_atomically(target, contents[target.name], overwrite) for target in targets]

    def export_file(self, out_dir, name: str, path, overwrite: bool = False) -> Path:
        """Copy the run's file ``name`` (e.g. :data:`RTDOSE_FILE`, :data:`RESULTS_FILE`) to ``path`` (atomic;
        an existing file only with ``overwrite``)."""
        from ..io.export import write_file_atomically

        return write_file_atomically(path, self.run_file(out_dir, name).read_bytes(), overwrite)

    def export_csv(self, out_dir, folder, overwrite: bool = False) -> List[Path]:
        """Copy ``dvh.csv`` and ``voi_results.csv`` into ``folder``; nothing is written when either exists and
        ``overwrite`` is False. An output folder of an earlier version, without ``voi_results.csv``, gets it
        made from its ``results.json``."""
        from ..io.export import write_file_atomically
        from ..result_tables import voi_results_csv_text

        folder = Path(folder)
        targets = [folder / DVH_FILE, folder / VOI_RESULTS_FILE]
        existing = [t for t in targets if t.exists()]
        if existing and not overwrite:
            raise OutputError("exists; not overwritten", existing[0])
        dvh = self.run_file(out_dir, DVH_FILE).read_bytes()
        table_path = Path(out_dir) / VOI_RESULTS_FILE
        if table_path.is_file():
            table = table_path.read_bytes()
        else:
            saved = json.loads(self.run_file(out_dir, RESULTS_FILE).read_text(encoding="utf-8"))
            table = voi_results_csv_text(saved.get("vois", {})).encode("utf-8")
        return [write_file_atomically(targets[0], dvh, overwrite), write_file_atomically(targets[1], table, overwrite)]


    # ------------------------------------------------------------------------------------------ cycles

    def cycle_summary(self, paths: Sequence[Any], next_activity_mbq: Optional[float] = None,
                      kidney_risk_factors: bool = False, strict: bool = False):
        """One patient's cycles from their runs' ``results.json``: cumulative dose and BED per VOI and the further
        cycles under the limits (:func:`LuDosimetryLib.cycles.summarize_cycle_results`), as ``ludosimetry cycles``
        computes them; with a scene, its table (:func:`~LuDosimetryLib.cycles.summary_table_rows`) in
        :attr:`cycles_table_node` (the same node each time).

        Parameters
        ----------
        paths : sequence of path-like
            The ``results.json`` of each cycle's run, in any order.
        next_activity_mbq : float, optional
            Activity of each further cycle (MBq); default: the mean of the cycles given (an assumption).
        kidney_risk_factors : bool
            The kidney BED limit for patients with risk factors (28 Gy instead of 40 Gy).
        strict : bool
            Refuse instead of assuming (:class:`~LuDosimetryLib.assumptions.StrictRefusal`).

        Returns
        -------
        CycleSummary
            Its ``assumptions`` list what was assumed.

        Raises
        ------
        StudyError
            A file that cannot be read or is not a run's results (naming it).
        CycleError
            The files are not one patient's cycles in order, or none is given.
        """
        from ..cycles import summarize_cycle_results, summary_table_rows
        from ..io.results_json import read_results_json

        results = [(str(p), read_results_json(p)) for p in paths]
        summary = summarize_cycle_results(results, None if next_activity_mbq is None else next_activity_mbq / 1e3,
                                          kidney_risk_factors, strict=strict)
        if self.scene is not None:
            self.cycles_table_node = nodes.set_text_table(self.scene, summary_table_rows(summary),
                                                          "LuDosimetry cycles", node=self.cycles_table_node)
        return summary


__all__ = ["DosimetrySession", "default_output_dir", "edited_output_dir", "reconstruction_dir", "safe_folder_name",
           "RESULTS_FILE", "DVH_FILE", "VOI_RESULTS_FILE", "RTDOSE_FILE", "REPORT_HTML_FILE", "REPORT_PDF_FILE",
           "REPORT_EXPORT_FILES", "RUN_STUDY_SHARE"]
