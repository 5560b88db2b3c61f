"""LuDosimetry: the 3D Slicer module over LuDosimetryLib (Lu-177 DOTATATE patient-specific dosimetry).

The module is a thin shell: the widget collects the study folder and options, the logic calls
:func:`LuDosimetryLib.pipeline.run_study` and :func:`LuDosimetryLib.pipeline.write_outputs`, and a small
helper (:func:`addResultsToScene`) shows the dose, the time-integrated activity and the per-VOI table in
the scene. No physics happens here.

LuDosimetryLib is imported inside the functions that need it: the module must load (and its panel
show) even before the library's dependencies are installed in Slicer's Python.
"""
import importlib.util
import logging
import math
import pathlib
import traceback
from typing import Annotated, Any, Callable, Dict, List, Optional, Sequence, Tuple

import ctk
import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import (
    Choice,
    GuiConnector,
    WithinRange,
    parameterNodeGuiConnector,
    parameterNodeWrapper,
    unannotatedType,
)

#: Python packages LuDosimetryLib needs at run time: (import name, pip requirement).
#: Kept equal to ``[project] dependencies`` of pyproject.toml (a test checks it).
REQUIRED_PACKAGES: Tuple[Tuple[str, str], ...] = (
    ("numpy", "numpy>=1.21"),
    ("scipy", "scipy>=1.7"),
    ("pydicom", "pydicom>=2.3"),
    ("SimpleITK", "SimpleITK>=2.2"),
    ("matplotlib", "matplotlib>=3.5"),
    ("nrrd", "pynrrd>=1.0"),
    ("icrp107_database", "icrp107-database>=0.0.3"),
)

#: The per-VOI quantities shown in the results table: (attribute of a VOI result, column title).
#: The table node and the Qt table are filled from this one list.
RESULT_COLUMNS: Tuple[Tuple[str, str], ...] = (
    ("volume_ml", "Volume (mL)"),
    ("mass_g", "Mass (g)"),
    ("tia_bq_s", "TIA (Bq·s)"),
    ("tiac_h", "TIAC (h)"),
    ("fit_model", "Fit model"),
    ("effective_half_life_h", "Effective half-life (h)"),
    ("mean_dose_gy", "Mean dose (Gy)"),
    ("d2_gy", "D2 (Gy)"),
    ("d50_gy", "D50 (Gy)"),
    ("d98_gy", "D98 (Gy)"),
    ("max_dose_gy", "Max dose (Gy)"),
    ("gy_per_gbq", "Dose per activity (Gy/GBq)"),
)

#: Title of the VOI-name column.
VOI_COLUMN = "VOI"

#: Fraction of the progress range given to run_study; write_outputs and the scene get the rest.
_RUN_STUDY_SHARE = 0.9


#
# LuDosimetry
#


class LuDosimetry(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Lu-177 Dosimetry"
        self.parent.categories = ["Nuclear Medicine"]
        self.parent.dependencies = []
        self.parent.contributors = ["LuDosimetry developers"]
        self.parent.helpText = """
Patient-specific absorbed dose for Lu-177 DOTATATE therapy from post-therapy quantitative SPECT/CT.
Choose the study folder (SPECT and CT of each time point, and the RTSTRUCT of organs and lesions) and an
output folder, then Run: time-activity curves are fitted per VOI, integrated to time-integrated activity,
and converted to absorbed dose with a dose-voxel kernel (dvk) or local deposition (ldm). The dose and
TIA images and a table of per-VOI results are added to the scene; results.json, dvh.csv, plots, NRRD
images and an RT Dose are written to the output folder.
"""
        self.parent.acknowledgementText = """
Decay data: ICRP Publication 107 (icrp107-database package).
"""


#
# Parameter node
#


@parameterNodeGuiConnector
class ctkPathLineEditToStrConnector(GuiConnector):
    """Connects a ctkPathLineEdit to a ``str`` parameter (Slicer's own connector takes pathlib types only,
    whose default ``Path()`` would show as "." in an empty field)."""

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return type(widget) == ctk.ctkPathLineEdit and unannotatedType(datatype) == str

    @staticmethod
    def create(widget, datatype):
        if ctkPathLineEditToStrConnector.canRepresent(widget, datatype):
            return ctkPathLineEditToStrConnector(widget)
        return None

    def __init__(self, widget):
        super().__init__()
        self._widget = widget

    def _connect(self):
        self._widget.currentPathChanged.connect(self.changed)

    def _disconnect(self):
        self._widget.currentPathChanged.disconnect(self.changed)

    def widget(self):
        return self._widget

    def read(self) -> str:
        return self._widget.currentPath

    def write(self, value: str) -> None:
        if self._widget.currentPath != value:
            self._widget.currentPath = value


@parameterNodeWrapper
class LuDosimetryParameterNode:
    """What the panel remembers in the scene.

    studyDirectory - folder with the DICOM study ("" when not chosen).
    outputDirectory - folder for results ("" when not chosen).
    doseMethod - "dvk" (dose-voxel kernel) or "ldm" (local deposition).
    injectedActivityMBq - override of the injected activity in MBq; 0 uses the DICOM headers.
    overwrite - replace the files of an earlier run in the output folder.
    referenceTimePoint - index (0-based) of the time point whose grid carries the dose.
    pvc - partial-volume correction: "none" or "gtm" (needs psfFwhmMm, mm).
    densityCorrection - scale the dose by the CT density.
    """

    studyDirectory: str = ""
    outputDirectory: str = ""
    doseMethod: Annotated[str, Choice(["dvk", "ldm"])] = "dvk"
    # (decimals and suffix are set in the .ui; a Decimals annotation would be logged as unused)
    injectedActivityMBq: Annotated[float, WithinRange(0.0, 1.0e5)] = 0.0
    overwrite: bool = False
    referenceTimePoint: Annotated[int, WithinRange(0, 9)] = 0
    pvc: Annotated[str, Choice(["none", "gtm"])] = "none"
    psfFwhmMm: Annotated[float, WithinRange(0.0, 100.0)] = 0.0
    densityCorrection: bool = True


#
# LuDosimetryWidget
#


class LuDosimetryWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: options, Run/Cancel, progress and the results table. No computation here."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._running = False
        self._cancelRequested = False
        self._lastStudyDirectory = ""

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LuDosimetry.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = LuDosimetryLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.runButton.connect("clicked(bool)", self.onRunButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.recomputeButton.connect("clicked(bool)", self.onRecomputeButton)

        self.ui.progressBar.setValue(0)
        self.ui.statusLabel.text = ""
        self._setupResultsTable()

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[LuDosimetryParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with a "SlicerParameterName" property in the .ui file are connected here.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._lastStudyDirectory = self._parameterNode.studyDirectory
        self._checkCanRun()

    def _checkCanRun(self, caller=None, event=None) -> None:
        node = self._parameterNode
        ready = bool(node and node.studyDirectory.strip() and node.outputDirectory.strip())
        self.ui.runButton.enabled = ready and not self._running
        self.ui.cancelButton.enabled = self._running
        self.ui.recomputeButton.enabled = (ready and not self._running
                                           and any(n is not None for n in self.logic.segmentationNodesByTimePoint()))
        self.ui.studyCollapsibleButton.enabled = not self._running
        self.ui.runButton.toolTip = ("Compute TACs, TIA, absorbed dose and DVHs and write them to the output folder."
                                     if ready else "Choose the study folder and the output folder.")

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        """Propose an output folder beside a newly chosen study when none is set; update the buttons.

        Done here, after the parameter node took the new study folder, rather than on the path widget's
        signal: setting a parameter from that signal would rewrite the widgets from a node that does not
        hold the new study folder yet.
        """
        node = self._parameterNode
        if node and node.studyDirectory != self._lastStudyDirectory:
            self._lastStudyDirectory = node.studyDirectory
            if node.studyDirectory.strip() and not node.outputDirectory.strip():
                node.outputDirectory = str(defaultOutputDirectory(node.studyDirectory))
        self._checkCanRun()

    def onCancelButton(self) -> None:
        self._cancelRequested = True
        self.ui.cancelButton.enabled = False
        self.ui.statusLabel.text = "Cancelling at the next step..."

    def onRunButton(self) -> None:
        if self._running or not self._parameterNode:
            return
        node = self._parameterNode
        if not self._ensureDependencies():
            return
        from LuDosimetryLib.errors import CancelledError, LuDosimetryError

        self._setRunning(True)
        try:
            results = self.logic.run(
                node.studyDirectory,
                node.outputDirectory,
                dose_method=node.doseMethod,
                injected_activity_bq=activityMBqToBq(node.injectedActivityMBq),
                overwrite=node.overwrite,
                progress=self._onProgress,
                **self._pipelineOptions(),
                load_time_points=True,
            )
        except CancelledError:
            self.ui.statusLabel.text = "Cancelled."
        except LuDosimetryError as error:
            # The same one-line text the command-line tool prints.
            self.ui.statusLabel.text = "Failed."
            slicer.util.errorDisplay(str(error), windowTitle="LuDosimetry")
        except Exception as error:  # a bug, not a user error: show it with the traceback
            logging.exception("LuDosimetry failed")
            self.ui.statusLabel.text = "Failed."
            slicer.util.errorDisplay(f"Unexpected error: {error}", windowTitle="LuDosimetry",
                                     detailedText=traceback.format_exc())
        else:
            self.showResults(results)
            runWarnings = list(getattr(results, "warnings", None) or [])
            for warning in runWarnings:
                logging.warning(f"LuDosimetry: {warning}")
            self.ui.statusLabel.text = (f"Done. Results written to {node.outputDirectory}"
                                        + (f" ({len(runWarnings)} warnings, see the Python console)"
                                           if runWarnings else ""))
        finally:
            self._setRunning(False)

    def _pipelineOptions(self) -> Dict[str, Any]:
        node = self._parameterNode
        return dict(pvc=node.pvc, psf_fwhm_mm=node.psfFwhmMm if node.psfFwhmMm > 0 else None,
                    density_correction=node.densityCorrection, reference_time_point=node.referenceTimePoint)

    def onRecomputeButton(self) -> None:
        """Rerun with the scene's VOI segmentations (one per time point) into a new output folder."""
        if self._running or not self._parameterNode:
            return
        node = self._parameterNode
        from LuDosimetryLib.errors import CancelledError, LuDosimetryError

        out = pathlib.Path(node.outputDirectory)
        out = out.with_name(out.name + "-edited")
        self._setRunning(True)
        try:
            results = self.logic.recomputeWithEditedVois(
                node.studyDirectory, self.logic.segmentationNodesByTimePoint(), out, dose_method=node.doseMethod,
                injected_activity_bq=activityMBqToBq(node.injectedActivityMBq), overwrite=node.overwrite,
                progress=self._onProgress, **self._pipelineOptions())
        except CancelledError:
            self.ui.statusLabel.text = "Cancelled."
        except LuDosimetryError as error:
            self.ui.statusLabel.text = "Failed."
            slicer.util.errorDisplay(str(error), windowTitle="LuDosimetry")
        else:
            self.showResults(results)
            self.ui.statusLabel.text = f"Done. Results with the edited VOIs written to {out}"
        finally:
            self._setRunning(False)

    def _setRunning(self, running: bool) -> None:
        self._running = running
        self._cancelRequested = False
        if running:
            self.ui.progressBar.setValue(0)
            self.ui.statusLabel.text = "Starting..."
        self._checkCanRun()
        slicer.app.processEvents()

    def _onProgress(self, fraction: float, message: str) -> None:
        """Progress callback given to the logic; raises CancelledError once Cancel was clicked."""
        self.ui.progressBar.setValue(int(round(1000 * min(max(float(fraction), 0.0), 1.0))))
        if message:
            self.ui.statusLabel.text = message
        slicer.app.processEvents()  # lets the Cancel click through
        if self._cancelRequested and fraction < 1.0:
            from LuDosimetryLib.errors import CancelledError
            raise CancelledError()

    def _ensureDependencies(self) -> bool:
        """Offer to pip-install what LuDosimetryLib lacks in Slicer's Python; True when all is there."""
        missing = missingRequirements()
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
                "LuDosimetry needs these Python packages, which are not installed yet:\n"
                + "\n".join(missing) + "\n\nInstall them now?", windowTitle="LuDosimetry"):
            return False
        with slicer.util.tryWithErrorDisplay("Installing the Python packages failed.", waitCursor=True):
            slicer.util.pip_install(list(missing))
            importlib.invalidate_caches()
            return not missingRequirements()
        return False

    def _setupResultsTable(self) -> None:
        table = self.ui.resultsTableWidget
        headers = [VOI_COLUMN] + [title for _, title in RESULT_COLUMNS]
        table.setColumnCount(len(headers))
        table.setHorizontalHeaderLabels(headers)
        table.setRowCount(0)

    def showResults(self, results) -> None:
        """Fill the Qt results table from the results of run_study."""
        table = self.ui.resultsTableWidget
        rows = resultRows(results)
        table.setRowCount(len(rows))
        for rowIndex, (voiName, values) in enumerate(rows):
            table.setItem(rowIndex, 0, qt.QTableWidgetItem(voiName))
            for columnIndex, ((attribute, _), value) in enumerate(zip(RESULT_COLUMNS, values), start=1):
                item = qt.QTableWidgetItem(formatValue(attribute, value))
                if not isinstance(value, str):
                    item.setTextAlignment(qt.Qt.AlignRight | qt.Qt.AlignVCenter)
                table.setItem(rowIndex, columnIndex, item)
        table.resizeColumnsToContents()


#
# Pure helpers (no Slicer objects; the static tests exercise them)
#


def activityMBqToBq(activityMBq: float) -> Optional[float]:
    """Injected-activity override in Bq from the panel's MBq value; ``None`` (use the headers) at 0."""
    activityMBq = float(activityMBq)
    return activityMBq * 1.0e6 if activityMBq > 0.0 else None


def defaultOutputDirectory(studyDirectory) -> pathlib.Path:
    """The output folder proposed for a study: ``<study folder>-dosimetry`` beside it."""
    study = pathlib.Path(studyDirectory)
    return study.with_name(study.name + "-dosimetry")


def missingRequirements(packages: Sequence[Tuple[str, str]] = REQUIRED_PACKAGES) -> List[str]:
    """Pip requirements of the packages that cannot be imported (found without importing them)."""
    return [requirement for moduleName, requirement in packages if importlib.util.find_spec(moduleName) is None]


def resultRows(results) -> List[Tuple[str, List[Any]]]:
    """``[(voi name, [value of each RESULT_COLUMNS attribute])]`` from ``results.vois``, in its order.

    A quantity the library leaves out (or sets to None) is ``None`` here.
    """
    return [(str(name), [getattr(voi, attribute, None) for attribute, _ in RESULT_COLUMNS])
            for name, voi in results.vois.items()]


def formatValue(attribute: str, value: Any) -> str:
    """Text of one table cell: 4 significant digits, activities in scientific notation."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if attribute == "tia_bq_s":
        return f"{value:.3e}"
    return f"{value:.4g}"


#
# MRML: the nodes are made by LuDosimetryLib.mrml (the MRML bridge); these wrappers keep the module's names.
#


def addResultsToScene(results, namePrefix: str = "LuDosimetry", scene=None) -> Dict[str, Any]:
    """Add the reference SPECT, the dose and TIA images, the per-VOI table and the DVH and TAC charts to
    the scene, under the patient and study in the subject hierarchy.

    Returns
    -------
    dict
        ``{"study_item", "spect", "dose", "tia", "table", "dvh_chart", "tac_chart"}`` (see
        :func:`LuDosimetryLib.mrml.add_results`).
    """
    from LuDosimetryLib import mrml

    scene = scene if scene is not None else slicer.mrmlScene
    nodes = mrml.add_results(scene, results, name_prefix=namePrefix, table_columns=RESULT_COLUMNS)
    app = getattr(slicer, "app", None)
    if app is not None and app.layoutManager() is not None:
        background = nodes["spect"] if nodes["spect"] is not None else nodes["dose"]
        slicer.util.setSliceViewerLayers(background=background, foreground=nodes["dose"],
                                         foregroundOpacity=0.5, fit=True)
    return nodes


def resultsToTableNode(results, name: str, scene=None):
    """A vtkMRMLTableNode with one row per VOI: its name, then one column per RESULT_COLUMNS entry
    (numbers as double columns, NaN where the library gives none; text as string columns)."""
    from LuDosimetryLib import mrml

    return mrml.add_results_table(scene if scene is not None else slicer.mrmlScene, results, name,
                                  columns=RESULT_COLUMNS)


#
# LuDosimetryLogic
#


class LuDosimetryLogic(ScriptedLoadableModuleLogic):
    """Runs the pipeline of LuDosimetryLib; usable from the Python console and from scripts without the widget.

    After :meth:`run`, :attr:`lastNodes` holds the nodes it added to the scene (empty when none),
    :attr:`lastResults` the results and :attr:`timePointItems` the per-time-point nodes (SPECT, CT,
    segmentation) when the study was loaded.

    Parameters
    ----------
    scene : vtkMRMLScene, optional
        The scene to fill; ``slicer.mrmlScene`` by default (a scene of LuDosimetryLib.mrml.create_scene in
        plain Python).
    """

    def __init__(self, scene=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.lastNodes: Dict[str, Any] = {}
        self.lastResults = None
        self.timePointItems: List[Dict[str, Any]] = []
        self._scene = scene

    @property
    def scene(self):
        return self._scene if self._scene is not None else getattr(slicer, "mrmlScene", None)

    def getParameterNode(self):
        return LuDosimetryParameterNode(super().getParameterNode())

    @staticmethod
    def runOptions(dose_method: str = "dvk", injected_activity_bq: Optional[float] = None, injection_time=None,
                   spect_series_uid=None, pvc: str = "none", psf_fwhm_mm: Optional[float] = None,
                   density_correction: bool = True, reference_time_point: int = 0):
        """LuDosimetryLib.pipeline.RunOptions from the panel's options (defaults leave the library's)."""
        from LuDosimetryLib.pipeline import RunOptions

        options = dict(dose_method=dose_method, injected_activity_bq=injected_activity_bq,
                       injection_time=injection_time, spect_series_uid=spect_series_uid)
        # Only what differs from the library defaults is passed (older RunOptions lack the later fields).
        if pvc != "none":
            options.update(pvc=pvc, psf_fwhm_mm=psf_fwhm_mm)
        if not density_correction:
            options["density_correction"] = False
        if reference_time_point:
            options["reference_time_point"] = int(reference_time_point)
        return RunOptions(**options)

    def inventory(self, study_dir, injected_activity_bq: Optional[float] = None, injection_time=None):
        """The study's inventory (time points, series, roles, hours after injection) for the panel."""
        from LuDosimetryLib.errors import StudyError
        from LuDosimetryLib.io.inventory import scan_study

        if study_dir is None or not str(study_dir).strip():
            raise StudyError("no study folder chosen")
        return scan_study(pathlib.Path(study_dir), injected_activity_bq=injected_activity_bq,
                          injection_time=injection_time)

    def run(self, study_dir, out_dir, dose_method: str = "dvk",
            injected_activity_bq: Optional[float] = None, injection_time=None,
            spect_series_uid: Optional[str] = None, overwrite: bool = False,
            progress: Optional[Callable[[float, str], None]] = None,
            load_into_scene: Optional[bool] = None, pvc: str = "none", psf_fwhm_mm: Optional[float] = None,
            density_correction: bool = True, reference_time_point: int = 0,
            load_time_points: bool = False):
        """Compute the dosimetry of one study, write the outputs and (in Slicer) show them.

        Parameters
        ----------
        study_dir, out_dir : path-like
            The DICOM study folder and the folder for results.json, dvh.csv, plots, NRRD and RT Dose.
        dose_method : {"dvk", "ldm"}
            Dose-voxel-kernel convolution or local deposition.
        injected_activity_bq : float, optional
            Injected activity in Bq, overriding the DICOM headers.
        injection_time : datetime.datetime, optional
            Injection time, overriding the DICOM headers.
        spect_series_uid : str, optional
            The SPECT series to use where a time point has several.
        overwrite : bool
            Replace the files of an earlier run in ``out_dir``.
        progress : callable, optional
            ``progress(fraction, message)``; raising LuDosimetryLib.errors.CancelledError cancels.
        load_into_scene : bool, optional
            Add the volumes, the table and the charts to the scene; by default whenever a scene exists.
        pvc : {"none", "gtm"}
            Partial-volume correction; ``"gtm"`` needs ``psf_fwhm_mm`` (mm).
        density_correction : bool
            Scale the dose by the CT density.
        reference_time_point : int
            Index (0-based) of the time point whose grid carries the dose.
        load_time_points : bool
            Also load each time point's SPECT, CT and VOIs (one segmentation per time point, for editing).

        Returns
        -------
        The results of :func:`LuDosimetryLib.pipeline.run_study`.

        Raises
        ------
        LuDosimetryLib.errors.LuDosimetryError
            A problem with the inputs or the options (one-line message naming the file).
        """
        from LuDosimetryLib.errors import OutputError, StudyError
        from LuDosimetryLib.io.export import check_output_dir
        from LuDosimetryLib.pipeline import RunOptions, run_study, write_outputs

        if study_dir is None or not str(study_dir).strip():
            raise StudyError("no study folder chosen")
        if out_dir is None or not str(out_dir).strip():
            raise OutputError("no output folder chosen")
        # Refuse an unusable output folder before the long computation, as the command-line tool does.
        check_output_dir(pathlib.Path(out_dir), overwrite)
        report = progress if progress is not None else (lambda fraction, message: None)

        self.lastNodes = {}
        if (pvc, psf_fwhm_mm, density_correction, reference_time_point) == ("none", None, True, 0):
            options = RunOptions(dose_method=dose_method, injected_activity_bq=injected_activity_bq,
                                 injection_time=injection_time, spect_series_uid=spect_series_uid)
        else:
            options = self.runOptions(dose_method, injected_activity_bq, injection_time, spect_series_uid,
                                      pvc, psf_fwhm_mm, density_correction, reference_time_point)
        results = run_study(pathlib.Path(study_dir), options,
                            progress=lambda fraction, message: report(_RUN_STUDY_SHARE * fraction, message))
        report(_RUN_STUDY_SHARE, "Writing the results")
        write_outputs(results, pathlib.Path(out_dir), overwrite=overwrite)
        self.lastResults = results

        if load_into_scene is None:
            load_into_scene = self.scene is not None
        if load_into_scene:
            report(0.95, "Adding the results to the scene")
            self.lastNodes = addResultsToScene(results, scene=self.scene)
            if load_time_points and getattr(results, "inventory", None) is not None:
                self.loadTimePoints(results, parentItem=self.lastNodes.get("study_item"))
        report(1.0, "Done")
        return results

    def loadTimePoints(self, results, parentItem: Optional[int] = None) -> List[Dict[str, Any]]:
        """Load each time point's SPECT, CT and VOIs (one segmentation per time point) of a run."""
        from LuDosimetryLib import mrml

        self.timePointItems = mrml.add_time_points(
            self.scene, results.inventory, injection_time=results.injection_time,
            spect_series_uids=[tp.spect_series_uid for tp in results.time_points], parent_item=parentItem)
        return self.timePointItems

    def segmentationNodesByTimePoint(self) -> List[Any]:
        """The VOI segmentation of each loaded time point (None where a time point has none)."""
        return [item.get("segmentation") for item in self.timePointItems]

    def recomputeWithEditedVois(self, study_dir, segmentation_nodes: Sequence[Any], out_dir, work_dir=None,
                                overwrite: bool = False, progress: Optional[Callable[[float, str], None]] = None,
                                load_into_scene: Optional[bool] = None, **options):
        """Rerun the dosimetry with the (edited) segmentations as VOIs.

        The pipeline reads VOIs from RTSTRUCT files, so the segmentations become NEW RTSTRUCTs in a
        working copy of the study (``work_dir``, by default ``<out_dir>-work``): links to the original
        images, one RTSTRUCT per time point drawn on that time point's SPECT, and none of the original
        RTSTRUCTs. The original study folder is never modified. Then :meth:`run` runs on the working copy.

        Parameters
        ----------
        segmentation_nodes : sequence of vtkMRMLSegmentationNode
            One per time point, in time-point order; all with the same segment names.
        work_dir : path-like, optional
            New (or empty) folder for the working copy.
        options
            As for :meth:`run` (dose_method, pvc, psf_fwhm_mm, ...).

        Returns
        -------
        The results of the rerun.
        """
        from LuDosimetryLib import mrml
        from LuDosimetryLib.errors import OutputError, StudyError
        from LuDosimetryLib.io.export import check_output_dir
        from LuDosimetryLib.io.images import read_spect
        from LuDosimetryLib.pipeline import choose_spect_series

        if out_dir is None or not str(out_dir).strip():
            raise OutputError("no output folder chosen")
        check_output_dir(pathlib.Path(out_dir), overwrite)
        report = progress if progress is not None else (lambda fraction, message: None)
        inventory = self.inventory(study_dir, options.get("injected_activity_bq"), options.get("injection_time"))
        nodes = list(segmentation_nodes)
        if len(nodes) != len(inventory.time_points) or any(node is None for node in nodes):
            raise StudyError(f"{len(inventory.time_points)} time points need one segmentation each "
                             f"(got {sum(node is not None for node in nodes)})", study_dir)
        entries = choose_spect_series(inventory, self.runOptions(spect_series_uid=options.get("spect_series_uid")))
        masks, references = [], []
        for k, (entry, node) in enumerate(zip(entries, nodes)):
            report(0.1 * k / len(nodes), f"Reading the VOIs of time point {k + 1}")
            spect = read_spect(entry.files, injection_time=inventory.injection_time,
                               what=f"SPECT {entry.description or entry.series_instance_uid}")
            references.append(spect.image)
            masks.append(mrml.masks_from_segmentation(node, spect.image))
        colors = mrml.segment_colors(nodes[0])
        work = pathlib.Path(work_dir) if work_dir else pathlib.Path(str(out_dir).rstrip("/\\") + "-work")
        report(0.1, "Writing the edited VOIs as new RTSTRUCTs")
        mrml.write_working_study(inventory, masks, references, [e.series_instance_uid for e in entries], work,
                                 colors=colors)
        self.lastWorkDirectory = work
        return self.run(work, out_dir, overwrite=overwrite, load_into_scene=load_into_scene,
                        progress=lambda fraction, message: report(0.15 + 0.85 * fraction, message), **options)

    def exportSegmentationAsRtstruct(self, segmentation_node, path, time_point: int, study_dir=None):
        """Write one time point's (edited) segmentation as a NEW RTSTRUCT file drawn on its SPECT."""
        from LuDosimetryLib import mrml
        from LuDosimetryLib.io.images import read_spect
        from LuDosimetryLib.pipeline import choose_spect_series

        inventory = self.inventory(study_dir if study_dir is not None else self.lastResults.inventory.root)
        entry = choose_spect_series(inventory, self.runOptions())[time_point]
        spect = read_spect(entry.files, injection_time=inventory.injection_time)
        return mrml.export_segmentation_rtstruct(segmentation_node, path, spect.image, entry)

    def saveScene(self, path) -> pathlib.Path:
        """Save the scene as a .mrb bundle (written atomically)."""
        from LuDosimetryLib import mrml

        return mrml.save_mrb(self.scene, path)


#
# LuDosimetryTest
#


class LuDosimetryTest(ScriptedLoadableModuleTest):
    """Runs the logic on the synthetic patient of LuDosimetryLib (needs the library's dependencies)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LuDosimetryDependencies()
        self.setUp()
        self.test_LuDosimetryErrors()
        self.setUp()
        self.test_LuDosimetrySyntheticPatient()

    def test_LuDosimetryDependencies(self):
        missing = missingRequirements()
        if missing:
            slicer.util.pip_install(missing)
            importlib.invalidate_caches()
        self.assertEqual(missingRequirements(), [])

    def test_LuDosimetryErrors(self):
        import tempfile

        from LuDosimetryLib.errors import LuDosimetryError

        logic = LuDosimetryLogic()
        with tempfile.TemporaryDirectory(dir=slicer.app.temporaryPath) as tmp:
            emptyStudy = pathlib.Path(tmp) / "empty"
            emptyStudy.mkdir()
            with self.assertRaises(LuDosimetryError):
                logic.run(emptyStudy, pathlib.Path(tmp) / "out")
            with self.assertRaises(LuDosimetryError):
                logic.run("", pathlib.Path(tmp) / "out")
        self.assertEqual(logic.lastNodes, {})

    def test_LuDosimetrySyntheticPatient(self):
        import tempfile

        from LuDosimetryLib.phantom import write_synthetic_patient
        from LuDosimetryLib.pipeline import RunOptions, run_study

        self.delayDisplay("Writing the synthetic patient")
        with tempfile.TemporaryDirectory(dir=slicer.app.temporaryPath) as tmp:
            study = write_synthetic_patient(pathlib.Path(tmp) / "study", seed=0, fast=True)
            outDir = pathlib.Path(tmp) / "out"

            self.delayDisplay("Running the logic")
            fractions = []
            logic = LuDosimetryLogic()
            results = logic.run(study, outDir, dose_method="dvk",
                                progress=lambda fraction, message: fractions.append(fraction))
            self.assertTrue((outDir / "results.json").is_file())
            self.assertTrue(fractions and fractions[-1] == 1.0)
            self.assertEqual(fractions, sorted(fractions))

            for key in ("dose", "tia", "table"):
                self.assertIsNotNone(logic.lastNodes.get(key), key)
            doseArray = slicer.util.arrayFromVolume(logic.lastNodes["dose"])
            self.assertEqual(doseArray.shape, results.dose_gy.GetSize()[::-1])

            # The table in the scene holds what run_study gives when called directly.
            direct = run_study(study, RunOptions(dose_method="dvk"))
            expected = resultRows(direct)
            table = logic.lastNodes["table"]
            self.assertEqual(table.GetNumberOfRows(), len(expected))
            self.assertGreater(len(expected), 0)
            for row, (voiName, values) in enumerate(expected):
                self.assertEqual(table.GetCellText(row, 0), voiName)
                for (attribute, title), value in zip(RESULT_COLUMNS, values):
                    column = table.GetTable().GetColumnByName(title)
                    self.assertIsNotNone(column, title)
                    cell = column.GetValue(row)
                    if value is None:
                        continue
                    if isinstance(value, str):
                        self.assertEqual(cell, value, f"{voiName} {attribute}")
                    else:
                        self.assertTrue(math.isclose(cell, float(value), rel_tol=1e-9, abs_tol=1e-12),
                                        f"{voiName} {attribute}: table {cell} != run_study {value}")

            # Outputs are not overwritten unless asked.
            from LuDosimetryLib.errors import OutputError
            with self.assertRaises(OutputError):
                logic.run(study, outDir, load_into_scene=False)
        self.delayDisplay("Test passed")
