"""LuDosimetry: the 3D Slicer module over LuDosimetryLib (Lu-177 DOTATATE patient-specific dosimetry).

A GUI shell. The panel has the sections a user works down: Study (a study of Slicer's DICOM database or a
folder, its inventory, the injection), Reconstruction (when the study holds projections), Registration,
VOIs (one segmentation per time point, Segment Editor, recompute with the edited VOIs), Fits and TIA, Dose,
and Results (table, DVH and TAC plots, exports).

- The options of a run are declared once, in :mod:`LuDosimetryLib.options`: the parameter node's fields
  that hold them, their choices and ranges come from there, and so does the reading of the panel's values
  into :class:`~LuDosimetryLib.options.RunOptions`.
- :class:`LuDosimetryLogic` is a thin adapter over :class:`LuDosimetryLib.mrml.session.DosimetrySession`,
  which runs the pipeline, fills the scene, recomputes with edited VOIs, exports and reads the DICOM
  database. No physics and no file formats here.

Only the standard-library parts of LuDosimetryLib (options, dependencies, errors) are imported at the top:
the module loads, and its panel shows, before the library's dependencies are installed in Slicer's Python.
"""
import html
import importlib
import logging
import pathlib
import sys
import traceback
from typing import Annotated, Any, Callable, Dict, List, Optional, Sequence

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
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin

from LuDosimetryLib import dependencies, options
from LuDosimetryWidgets import connectors  # noqa: F401  (registers the panel's parameter-node connectors)

#: Singleton tags of the plot view nodes that show the charts in the panel.
TAC_PLOT_VIEW_TAG = "LuDosimetryTACPlotView"
DVH_PLOT_VIEW_TAG = "LuDosimetryDVHPlotView"


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
Work down the sections. Study: pick a study of the DICOM database (its files are linked into a temporary
folder, never changed) or a study folder (SPECT and CT of each time point, RTSTRUCT of organs and lesions),
check the inventory (time points, hours after injection) and, if needed, the injected activity and time.
Reconstruction (when the study holds projections): OSEM/BSREM with scatter and PSF options. Registration:
reference time point, none/rigid/deformable, VOIs of each time point or the reference's propagated, and a
check view (a registered time point over the reference). VOIs: each time point's segmentation, Segment
Editor, Recompute with edited VOIs. Fits and TIA: TIA map from the VOI fits or per voxel, reduced time
points (e.g. 2,3) with their method, the model of each VOI (auto = AICc), TAC plot. Dose:
dose-voxel kernel (dvk) or local deposition (ldm), density correction. Results: per-VOI table (with the
uncertainty, BED and EQD2), DVH plot, export of the RT Dose, the edited VOIs (RTSTRUCT), CSV and the report
(report.html, report.pdf, results.json), Open report. Cycles: the results.json of each of a patient's cycles,
cumulative dose and BED per VOI and the further cycles under the kidney and red-marrow limits. Whole body and
red marrow: planar whole-body images, hybrid planar/SPECT, red-marrow method, blood samples; the planar view
(a session's image with the VOI regions), its regions edited in Segment Editor and Recompute with them.
"""
        self.parent.acknowledgementText = """
Decay data: ICRP Publication 107 (icrp107-database package).
"""


#
# Parameter node
#


def _annotation(parameter):
    """The parameter-node annotation of an option's panel field (its choices or its widget's range)."""
    if parameter.choices:
        return Annotated[str, Choice(list(parameter.choices))]
    if parameter.range is not None:
        return Annotated[parameter.type, WithinRange(*parameter.range)]
    return parameter.type


#: Panel state that is not a run option: (annotation, default); a node field has no default (None).
PANEL_STATE = {
    "studyDirectory": (str, ""),                 # the DICOM study folder ("" when not chosen)
    "outputDirectory": (str, ""),                # the folder for results ("" when not chosen)
    "dicomStudyInstanceUid": (str, ""),          # the study taken from Slicer's DICOM database
    "voiTimePoint": (Annotated[int, WithinRange(0, 9)], 0),  # time point (0-based) shown in VOIs
    "voiSegmentation": (slicer.vtkMRMLSegmentationNode, None),   # that time point's VOI segmentation
    "registrationCheckTimePoint": (Annotated[int, WithinRange(0, 9)], 1),  # shown over the reference
}


def _parameterNodeClass():
    """The parameter node: one field per option the panel offers (:func:`LuDosimetryLib.options.panel_parameters`,
    in the options' user units: MBq, 1-based time points, ISO 8601 text) plus :data:`PANEL_STATE`."""
    annotations = {p.name: _annotation(p) for p in options.panel_parameters()}
    defaults = {p.name: p.default for p in options.panel_parameters()}
    for name, (annotation, default) in PANEL_STATE.items():
        annotations[name] = annotation
        if default is not None:
            defaults[name] = default
    doc = "What the panel remembers in the scene: the options of LuDosimetryLib.options and the panel's state."
    return type("LuDosimetryParameterNode", (), {"__annotations__": annotations, "__doc__": doc,
                                                 "__module__": __name__, **defaults})


LuDosimetryParameterNode = parameterNodeWrapper(_parameterNodeClass())


#
# LuDosimetryWidget
#


class LuDosimetryWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel. Every option lives in the parameter node (saved with the scene); the widget only moves
    values between the panel and the logic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._running = False
        self._cancelRequested = False
        self._lastStudyDirectory = ""
        self._lastVoiTimePoint = 0
        self._lastVoiSegmentation = None
        self._inventoryJson = None
        self._dicomStudies: List[Dict[str, str]] = []

    @property
    def session(self):
        return self.logic.session

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LuDosimetry.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = LuDosimetryLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        for button, slot in (("runButton", self.onRunButton), ("cancelButton", self.onCancelButton),
                             ("recomputeButton", self.onRecomputeButton),
                             ("dicomRefreshButton", self.onDicomRefreshButton),
                             ("dicomUseStudyButton", self.onDicomUseStudyButton),
                             ("scanStudyButton", self.onScanStudyButton),
                             ("reconstructButton", self.onReconstructButton),
                             ("segmentEditorButton", self.onSegmentEditorButton),
                             ("exportRtstructButton", self.onExportRtstructButton),
                             ("exportRtDoseButton", self.onExportRtDoseButton),
                             ("exportCsvButton", self.onExportCsvButton),
                             ("exportReportButton", self.onExportReportButton),
                             ("openReportButton", self.onOpenReportButton),
                             ("cyclesAddButton", self.onCyclesAddButton),
                             ("cyclesRemoveButton", self.onCyclesRemoveButton),
                             ("cyclesComputeButton", self.onCyclesComputeButton),
                             ("showPlanarViewButton", self.onShowPlanarViewButton),
                             ("planarRegionsEditButton", self.onPlanarRegionsEditButton),
                             ("planarRecomputeButton", self.onPlanarRecomputeButton),
                             ("showRegistrationCheckButton", self.onShowRegistrationCheckButton)):
            getattr(self.ui, button).connect("clicked(bool)", slot)

        # "Not set" of the injection date/time is the lowest date (shown as "from DICOM headers").
        self.ui.injectionTimeEdit.minimumDateTime = qt.QDateTime(qt.QDate(2000, 1, 1), qt.QTime(0, 0, 0))
        self.ui.injectionTimeEdit.dateTime = self.ui.injectionTimeEdit.minimumDateTime

        self.ui.progressBar.setValue(0)
        self.ui.statusLabel.text = ""
        self.onDicomRefreshButton()
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

    def onReload(self) -> None:
        """Reload LuDosimetryLib with the module, so that a library edit needs no Slicer restart."""
        for name in [n for n in sys.modules if n == "LuDosimetryLib" or n.startswith("LuDosimetryLib.")]:
            del sys.modules[name]
        importlib.invalidate_caches()
        ScriptedLoadableModuleWidget.onReload(self)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        self.session.forget_scene_nodes()
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with a "SlicerParameterName" property in the .ui file are connected here, through
            # connectParametersToGui: it returns the tag that disconnectGui needs in Slicer 5.8 and 5.10
            # (connectGui returns None in 5.8, so its connectors would stay attached and fight the new ones).
            self._parameterNodeGuiTag = self._parameterNode.connectParametersToGui({
                widget.property("SlicerParameterName"): widget
                for widget in self.parent.findChildren(qt.QWidget) if widget.property("SlicerParameterName")})
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._lastStudyDirectory = self._parameterNode.studyDirectory
            self._lastVoiTimePoint = self._parameterNode.voiTimePoint
            self._lastVoiSegmentation = self._parameterNode.voiSegmentation
            self._restoreFromScene()
        self._checkCanRun()

    def _restoreFromScene(self) -> None:
        """After a scene (.mrb) is loaded: the study's inventory and the charts again."""
        node = self._parameterNode
        if node.studyDirectory.strip() and pathlib.Path(node.studyDirectory).is_dir():
            self._scanStudy(quiet=True)
        self._showCharts()

    def _checkCanRun(self, caller=None, event=None) -> None:
        from LuDosimetryLib.result_tables import has_projections

        node = self._parameterNode
        ready = bool(node and node.studyDirectory.strip() and node.outputDirectory.strip())
        idle = not self._running
        segmentations = self.session.segmentation_nodes_by_time_point() if self.logic else []
        self.ui.runButton.enabled = ready and idle
        self.ui.cancelButton.enabled = self._running
        self.ui.recomputeButton.enabled = (ready and idle and bool(segmentations)
                                           and all(n is not None for n in segmentations))
        for section in (self.ui.studyCollapsibleButton, self.ui.registrationCollapsibleButton,
                        self.ui.voisCollapsibleButton, self.ui.fitsCollapsibleButton, self.ui.doseCollapsibleButton,
                        self.ui.wholeBodyCollapsibleButton):
            section.enabled = idle
        projections = has_projections(self._inventoryJson)
        self.ui.reconstructionCollapsibleButton.enabled = idle and projections
        self.ui.reconstructButton.enabled = idle and projections and bool(node and node.outputDirectory.strip())
        hasSegmentation = bool(node and node.voiSegmentation is not None)
        self.ui.segmentEditorButton.enabled = idle and hasSegmentation
        self.ui.exportRtstructButton.enabled = idle and hasSegmentation and bool(node.studyDirectory.strip())
        registered = self.session.registered_spect_nodes() if self.logic else {}
        self.ui.showRegistrationCheckButton.enabled = idle and bool(registered)
        self.ui.showRegistrationCheckButton.toolTip = (
            "Show the chosen time point's SPECT, carried to the reference grid by the registration, over the "
            "reference SPECT (50 % opacity) in the slice views." if registered else
            "Run the dosimetry with a rigid or deformable registration first.")
        if node:
            self.ui.voiModeComboBox.enabled = idle and node.registrationMethod != "none"
            self.ui.reducedMethodComboBox.enabled = idle and bool(node.reducedTimePoints.strip())
            self.ui.kineticsFromPathLineEdit.enabled = idle and bool(node.reducedTimePoints.strip())
            self.ui.populationFilePathLineEdit.enabled = idle and node.reducedMethod == "nlmm"
            self.ui.reconDewKSpinBox.enabled = node.reconScatter == "dew"  # k of the dual-energy window only
            # A kernel file applies to the kernel convolution only; its density only with a file.
            self.ui.kernelFilePathLineEdit.enabled = idle and node.doseMethod == "dvk"
            self.ui.kernelDensitySpinBox.enabled = idle and node.doseMethod == "dvk" and bool(node.kernelFile.strip())
            for widget in (self.ui.planarCalibrationSpinBox, self.ui.hybridTimePointSpinBox):  # planar images only
                widget.enabled = idle and node.usePlanar
            for widget in (self.ui.bloodSamplesPathLineEdit, self.ui.rmblrSpinBox):  # the blood-based method only
                widget.enabled = idle and node.marrowMethod in ("auto", "blood")
        outputs = self._outputDirectory()
        from LuDosimetryLib.report import REPORT_HTML_FILE, RESULTS_FILE, RTDOSE_FILE
        for button, name in ((self.ui.exportRtDoseButton, RTDOSE_FILE), (self.ui.exportCsvButton, RESULTS_FILE),
                             (self.ui.exportReportButton, RESULTS_FILE), (self.ui.openReportButton, REPORT_HTML_FILE)):
            button.enabled = idle and outputs is not None and (outputs / name).is_file()
        self.ui.cyclesComputeButton.enabled = idle and self.ui.cyclesListWidget.count > 0
        sessions = self.session.planar_session_count(outputs) if self.logic and outputs is not None else 0
        self.ui.planarSessionSpinBox.maximum = max(sessions, 1)
        self.ui.showPlanarViewButton.enabled = idle and sessions > 0
        shown = bool(self.logic and self.session.planar_view_nodes)
        self.ui.planarRegionsEditButton.enabled = idle and shown
        self.ui.planarRecomputeButton.enabled = ready and idle and shown
        self.ui.voiTimePointSpinBox.maximum = max(len(segmentations) - 1, 0)
        self.ui.registrationCheckTimePointSpinBox.maximum = max(self.ui.referenceTimePointSpinBox.maximum - 1, 1)
        self.ui.runButton.toolTip = ("Compute TACs, TIA, absorbed dose and DVHs and write them to the output folder."
                                     if ready else "Choose the study (DICOM database or folder) and the output folder.")

    def _outputDirectory(self) -> Optional[pathlib.Path]:
        """The folder of the last run's outputs (this session's run, else the panel's output folder)."""
        if self.logic and self.session.last_output_dir is not None:
            return pathlib.Path(self.session.last_output_dir)
        node = self._parameterNode
        if node and node.outputDirectory.strip():
            return pathlib.Path(node.outputDirectory)
        return None

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        """Propose an output folder beside a newly chosen study when none is set; rescan a new study; keep
        the VOI selector and the time point's segmentation in step; update the buttons.

        Done here, after the parameter node took the new value, rather than on the widgets' signals: setting
        a parameter from such a signal would rewrite the widgets from a node that does not hold the new
        value yet.
        """
        from LuDosimetryLib.mrml.session import default_output_dir

        node = self._parameterNode
        if not node:
            return
        if node.studyDirectory != self._lastStudyDirectory:
            self._lastStudyDirectory = node.studyDirectory
            if node.studyDirectory.strip() and not node.outputDirectory.strip():
                node.outputDirectory = str(default_output_dir(node.studyDirectory))
            self._inventoryJson = None
            self.ui.inventoryTableWidget.setRowCount(0)
            if node.studyDirectory.strip() and pathlib.Path(node.studyDirectory).is_dir():
                self._scanStudy(quiet=True)
        if node.voiTimePoint != self._lastVoiTimePoint:
            # Another time point: show its segmentation.
            self._lastVoiTimePoint = node.voiTimePoint
            segmentations = self.session.segmentation_nodes_by_time_point()
            shown = segmentations[node.voiTimePoint] if node.voiTimePoint < len(segmentations) else None
            self._lastVoiSegmentation = shown
            node.voiSegmentation = shown
        elif node.voiSegmentation is not self._lastVoiSegmentation:
            # The user chose another segmentation for this time point.
            self._lastVoiSegmentation = node.voiSegmentation
            if node.voiSegmentation is not None:
                self.session.set_segmentation_for_time_point(node.voiTimePoint, node.voiSegmentation)
        self._checkCanRun()

    # ------------------------------------------------------------------------------ errors and options

    def _optionLabel(self, name: str) -> str:
        """The panel's name of an option: the label of the widget that holds it (the command line would
        say its ``--flag``)."""
        try:
            parameter = options.option(name).parameter
        except KeyError:
            parameter = None
        for widget in slicer.util.findChildren(self.parent) if parameter else []:
            if widget.property("SlicerParameterName") == parameter:
                layout = widget.parentWidget().layout() if widget.parentWidget() else None
                label = layout.labelForField(widget) if hasattr(layout, "labelForField") else None
                text = label.text if label is not None else getattr(widget, "text", "")
                return f"'{text.rstrip(':')}'" if text else name
        return name

    def _showError(self, error) -> None:
        """The one-line message of a library error, options named as the panel shows them."""
        slicer.util.errorDisplay(error.describe(self._optionLabel), windowTitle="LuDosimetry")

    def _runOptions(self, **libraryValues):
        """The panel's RunOptions (validated; OptionError names the widget's option)."""
        return options.options_from_panel(self._parameterNode, "run", **libraryValues)

    def _inventoryOptions(self):
        """The panel's options a study scan reads (the others may still be incomplete, e.g. gtm without
        its PSF)."""
        from LuDosimetryLib.mrml.session import INVENTORY_OPTIONS

        return options.RunOptions(**options.values_from_panel(self._parameterNode, "run", names=INVENTORY_OPTIONS))

    # ------------------------------------------------------------------------------------------ Study

    def onDicomRefreshButton(self) -> None:
        """Fill the study list from Slicer's DICOM database."""
        from LuDosimetryLib.mrml.session import DosimetrySession

        combo = self.ui.dicomStudyComboBox
        combo.clear()
        database = getattr(slicer, "dicomDatabase", None)
        self._dicomStudies = DosimetrySession.dicom_studies(database) if database is not None and self._hasLibrary() else []
        for study in self._dicomStudies:
            combo.addItem(study["label"], study["study_instance_uid"])
        self.ui.dicomUseStudyButton.enabled = bool(self._dicomStudies)
        if not self._dicomStudies:
            combo.addItem("(no study in the DICOM database)")
        node = self._parameterNode
        if node and node.dicomStudyInstanceUid:
            index = combo.findData(node.dicomStudyInstanceUid)
            if index >= 0:
                combo.currentIndex = index

    def onDicomUseStudyButton(self) -> None:
        """Link the chosen database study's files into a temporary study folder and scan it."""
        node = self._parameterNode
        index = self.ui.dicomStudyComboBox.currentIndex
        if not node or not (0 <= index < len(self._dicomStudies)) or not self._ensureDependencies():
            return
        from LuDosimetryLib.errors import LuDosimetryError
        from LuDosimetryLib.mrml.session import default_output_dir, safe_folder_name

        study = self._dicomStudies[index]
        try:
            view = self.session.study_view_from_database(study["study_instance_uid"], slicer.dicomDatabase)
        except LuDosimetryError as error:
            self._showError(error)
            return
        # The output folder first: the one proposed beside a study folder would lie in the temporary view.
        if not node.outputDirectory.strip():
            node.outputDirectory = str(default_output_dir(
                pathlib.Path(slicer.app.defaultScenePath) / safe_folder_name(study["label"])))
        node.dicomStudyInstanceUid = study["study_instance_uid"]
        node.studyDirectory = str(view)

    def onScanStudyButton(self) -> None:
        self._scanStudy(quiet=False)

    def _scanStudy(self, quiet: bool) -> None:
        """Inventory of the study folder into the table (errors shown unless ``quiet``)."""
        node = self._parameterNode
        if not node or not self._hasLibrary():
            return
        from LuDosimetryLib.errors import LuDosimetryError
        from LuDosimetryLib.result_tables import INVENTORY_COLUMNS, has_projections, inventory_rows

        try:
            with slicer.util.WaitCursor():
                inventory = self.session.inventory(node.studyDirectory, self._inventoryOptions())
        except LuDosimetryError as error:
            self._inventoryJson = None
            self.ui.inventoryTableWidget.setRowCount(0)
            if not quiet:
                self._showError(error)
            return
        self._inventoryJson = inventory.to_json()
        self._fillTable(self.ui.inventoryTableWidget, [title for _, title in INVENTORY_COLUMNS],
                        [[row[key] for key, _ in INVENTORY_COLUMNS] for row in inventory_rows(self._inventoryJson)])
        timePoints = len(self._inventoryJson["time_points"])
        self.ui.referenceTimePointSpinBox.maximum = max(timePoints, 1)
        names = self.session.voi_names(inventory, node.referenceTimePoint - 1)
        if names:
            node.voiModels = options.voi_model_table_with_names(node.voiModels, names)
        projections = has_projections(self._inventoryJson)
        self.ui.reconstructionLabel.text = (
            "The study holds SPECT projections: reconstruct them into quantitative SPECT for the dosimetry."
            if projections else "The study has no SPECT projections.")
        if projections:
            self.ui.reconstructionCollapsibleButton.collapsed = False
        activity = self._inventoryJson.get("injected_activity_bq")
        when = self._inventoryJson.get("injection_time")
        self.ui.statusLabel.text = (f"{len(self._inventoryJson['series'])} series, {timePoints} time point(s); "
                                    f"injection {activity / 1e6:.0f} MBq" if activity else "injected activity unknown")
        self.ui.statusLabel.text += f" at {when}" if when else ", injection time unknown"
        self._checkCanRun()

    # -------------------------------------------------------------------------------- Reconstruction

    def onReconstructButton(self) -> None:
        node = self._parameterNode
        if self._running or not node or not self._ensureDependencies(dependencies.RECON_PACKAGES):
            return
        from LuDosimetryLib.mrml.session import reconstruction_dir

        def reconstruct():
            view = self.session.reconstruct(node.studyDirectory, reconstruction_dir(node.outputDirectory),
                                            options.options_from_panel(node, "reconstruct"),
                                            overwrite=node.overwrite, progress=self._onProgress)
            node.studyDirectory = str(view)  # the dosimetry now runs on the new reconstructions
            return view

        self._runAndShow(reconstruct, lambda view: f"Reconstructed; the study folder is now {view}")

    # ------------------------------------------------------------------------------------------ VOIs

    def onSegmentEditorButton(self) -> None:
        """Open Segment Editor on this time point's segmentation and SPECT."""
        node = self._parameterNode
        if node and node.voiSegmentation is not None:
            self._openSegmentEditor(node.voiSegmentation)

    def _openSegmentEditor(self, segmentation) -> None:
        source = self.session.source_volume_for_segmentation(segmentation)
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentation)
        if source is not None:
            if hasattr(editor, "setSourceVolumeNode"):
                editor.setSourceVolumeNode(source)
            else:  # Slicer before 5.2
                editor.setMasterVolumeNode(source)

    def onExportRtstructButton(self) -> None:
        """Write this time point's segmentation as a new RTSTRUCT (never over an existing file)."""
        node = self._parameterNode
        if not node or node.voiSegmentation is None:
            return
        path = self._askSavePath("Export edited VOIs as RTSTRUCT",
                                 pathlib.Path(node.outputDirectory or ".") / f"TP{node.voiTimePoint + 1}_edited_VOIs.dcm",
                                 "DICOM RTSTRUCT (*.dcm)")
        if path:
            self._runAndShow(lambda: self.session.export_segmentation_as_rtstruct(
                node.voiSegmentation, path, node.voiTimePoint, study_dir=node.studyDirectory,
                options=self._runOptions()), lambda written: f"Edited VOIs written to {written}")

    # ---------------------------------------------------------------------------------- Registration

    def onShowRegistrationCheckButton(self) -> None:
        """Reference SPECT as background, the chosen time point's registered SPECT as foreground (50 %)."""
        node = self._parameterNode
        if not node:
            return
        from LuDosimetryLib.errors import LuDosimetryError

        try:
            background, foreground = self.session.registration_check_layers(node.registrationCheckTimePoint)
        except LuDosimetryError as error:
            self._showError(error)
            return
        slicer.util.setSliceViewerLayers(background=background, foreground=foreground, foregroundOpacity=0.5,
                                         fit=True)
        self.ui.statusLabel.text = (f"Check view: {foreground.GetName()} over "
                                    f"{background.GetName() if background is not None else 'nothing'}")

    # ------------------------------------------------------------------------------------------ Run

    def onCancelButton(self) -> None:
        self._cancelRequested = True
        self.ui.cancelButton.enabled = False
        self.ui.statusLabel.text = "Cancelling at the next step..."

    def onRunButton(self) -> None:
        if self._running or not self._parameterNode or not self._ensureDependencies():
            return
        node = self._parameterNode
        for pathEdit in self.parent.findChildren(ctk.ctkPathLineEdit):
            if pathEdit.settingKey and pathEdit.currentPath:
                pathEdit.addCurrentPathToHistory()  # settingKey only reads the history; this writes it
        results = self._runAndShow(
            lambda: self.session.run(node.studyDirectory, node.outputDirectory, self._runOptions(),
                                     overwrite=node.overwrite, progress=self._onProgress, load_time_points=True),
            lambda results: f"Done. Results written to {node.outputDirectory}")
        if results is None:
            return
        self.showResults(results)
        # The model table lists the VOIs of the run (choices kept).
        node.voiModels = options.voi_model_table_with_names(node.voiModels, list(results.vois))
        segmentations = self.session.segmentation_nodes_by_time_point()
        if segmentations:
            self._lastVoiTimePoint = 0
            self._lastVoiSegmentation = segmentations[0]
            node.voiTimePoint = 0
            node.voiSegmentation = segmentations[0]

    def _recomputeEdited(self, recompute, edited: str) -> None:
        """Rerun through ``recompute(study, out, options, overwrite, progress)`` into ``<output folder>-edited``
        and show the results; ``edited`` names what the user edited, for the status line."""
        if self._running or not self._parameterNode:
            return
        from LuDosimetryLib.mrml.session import edited_output_dir

        node = self._parameterNode
        out = edited_output_dir(node.outputDirectory)
        results = self._runAndShow(lambda: recompute(node.studyDirectory, out, self._runOptions(),
                                                     node.overwrite, self._onProgress),
                                   lambda results: f"Done. Results with the edited {edited} written to {out}")
        if results is not None:
            self.showResults(results)

    def onRecomputeButton(self) -> None:
        """Rerun with the scene's VOI segmentations (one per time point) into ``<output folder>-edited``."""
        self._recomputeEdited(lambda study, out, options, overwrite, progress: self.session.recompute_with_edited_vois(
            study, self.session.segmentation_nodes_by_time_point(), out, options, overwrite=overwrite,
            progress=progress), "VOIs")

    def _runAndShow(self, compute: Callable[[], Any], doneText: Callable[[Any], str]):
        """Run ``compute`` (a session call) with progress and Cancel; the result, or None after an error
        (shown in a message box, the slot ends cleanly)."""
        from LuDosimetryLib.errors import CancelledError, LuDosimetryError

        self._setRunning(True)
        try:
            result = compute()
        except CancelledError:
            self.ui.statusLabel.text = "Cancelled."
            return None
        except LuDosimetryError as error:
            # The same one-line text as the command line, options named as the panel shows them.
            self.ui.statusLabel.text = "Failed."
            self._showError(error)
            return None
        except Exception as error:  # a bug, not a user error: show it with the traceback
            logging.exception("LuDosimetry failed")
            self.ui.statusLabel.text = "Failed."
            slicer.util.errorDisplay(f"Unexpected error: {error}", windowTitle="LuDosimetry",
                                     detailedText=traceback.format_exc())
            return None
        finally:
            self._setRunning(False)
        if hasattr(result, "assumptions"):  # a run's (an export keeps the run's list shown)
            self._showAssumptions(result)
        runWarnings = list(getattr(result, "warnings", None) or [])
        for warning in runWarnings:
            logging.warning(f"LuDosimetry: {warning}")
        self.ui.statusLabel.text = doneText(result) + (f" ({len(runWarnings)} warnings, see the Python console)"
                                                       if runWarnings else "")
        return result

    def _showAssumptions(self, result) -> None:
        """List the values the run assumed above the results table (empty when none)."""
        assumptions = list(getattr(result, "assumptions", None) or [])
        if not assumptions:
            self.ui.assumptionsLabel.text = ""
            return
        lines = "".join(f"<li>{html.escape(a.message())}</li>" for a in assumptions)
        self.ui.assumptionsLabel.text = (f"<b>{len(assumptions)} assumption(s) taken</b> "
                                         f"(tick Strict to refuse them):<ul>{lines}</ul>")

    def _setRunning(self, running: bool) -> None:
        self._running = running
        self._cancelRequested = False
        if running:
            self.ui.progressBar.setValue(0)
            self.ui.statusLabel.text = "Starting..."
        self._checkCanRun()
        slicer.app.processEvents()

    def _onProgress(self, fraction: float, message: str) -> None:
        """Progress callback given to the session; raises CancelledError once Cancel was clicked."""
        self.ui.progressBar.setValue(int(round(1000 * min(max(float(fraction), 0.0), 1.0))))
        if message:
            self.ui.statusLabel.text = message
        slicer.app.processEvents()  # lets the Cancel click through
        if self._cancelRequested and fraction < 1.0:
            from LuDosimetryLib.errors import CancelledError
            raise CancelledError()

    @staticmethod
    def _hasLibrary() -> bool:
        return not dependencies.missing_requirements()

    def _ensureDependencies(self, packages=dependencies.REQUIRED_PACKAGES) -> bool:
        """Offer to pip-install what is missing (torch through Slicer's PyTorch extension when it is
        there); True when all of ``packages`` can be imported."""
        missing = dependencies.missing_requirements(packages)
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
                "LuDosimetry needs these Python packages, which are not installed yet:\n" + "\n".join(missing)
                + ("\n\nPyTorch is a large download (several hundred MB)." if any("torch" in m for m in missing)
                   else "") + "\n\nInstall them now?", windowTitle="LuDosimetry"):
            return False
        try:
            with slicer.util.WaitCursor():
                for requirement in missing:  # in the listed order: torch first
                    if requirement.startswith("torch") and hasattr(slicer.modules, "pytorchutils"):
                        import PyTorchUtils
                        PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
                    else:
                        slicer.util.pip_install(requirement)
            importlib.invalidate_caches()
        except Exception as error:  # pip's or PyTorchUtils' failure, shown with its details
            slicer.util.errorDisplay(f"Installing the Python packages failed: {error}", windowTitle="LuDosimetry",
                                     detailedText=traceback.format_exc())
            return False
        return not dependencies.missing_requirements(packages)

    # -------------------------------------------------------------------------------------- Results

    def onExportRtDoseButton(self) -> None:
        from LuDosimetryLib.report import RTDOSE_FILE
        self._exportRunFile("Export RT Dose", RTDOSE_FILE, "DICOM RT Dose (*.dcm)")

    def onExportReportButton(self) -> None:
        from LuDosimetryLib.mrml.session import REPORT_EXPORT_FILES
        self._exportIntoFolder("Export report into folder", REPORT_EXPORT_FILES, self.session.export_report)

    def onOpenReportButton(self) -> None:
        """Open the run's report.html in the web browser."""
        from LuDosimetryLib.errors import LuDosimetryError
        try:
            path = self.session.report_path(self._outputDirectory())
        except LuDosimetryError as error:
            self._showError(error)
            return
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(path)))

    def _exportRunFile(self, title: str, name: str, fileFilter: str) -> None:
        path = self._askSavePath(title, (self._outputDirectory() or pathlib.Path.home()).parent / name, fileFilter)
        if path:
            self._confirmAndExport([pathlib.Path(path)], lambda overwrite: [
                self.session.export_file(self._outputDirectory(), name, path, overwrite)])

    def onExportCsvButton(self) -> None:
        from LuDosimetryLib.report import DVH_FILE, VOI_RESULTS_FILE
        self._exportIntoFolder("Export CSV into folder", (DVH_FILE, VOI_RESULTS_FILE), self.session.export_csv)

    def _exportIntoFolder(self, title: str, names: Sequence[str], export) -> None:
        """Ask for a folder, then ``export(output folder, folder, overwrite)`` the files ``names`` into it."""
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), title,
                                                     str(self._outputDirectory() or "."))
        if folder:
            self._confirmAndExport([pathlib.Path(folder) / name for name in names],
                                   lambda overwrite: export(self._outputDirectory(), folder, overwrite))

    @staticmethod
    def _askSavePath(title: str, default: pathlib.Path, fileFilter: str) -> str:
        """A file name from a save dialog ("" when cancelled); replacing a file is asked separately."""
        dialog = qt.QFileDialog(slicer.util.mainWindow(), title, str(default.parent), fileFilter)
        dialog.setAcceptMode(qt.QFileDialog.AcceptSave)
        dialog.setOption(qt.QFileDialog.DontConfirmOverwrite)
        dialog.selectFile(default.name)
        if not dialog.exec_():
            return ""
        files = dialog.selectedFiles()
        return str(files[0]) if files else ""

    def _confirmAndExport(self, targets: Sequence[pathlib.Path], write) -> None:
        """Ask before replacing existing files, then write (atomically, in the session)."""
        existing = [str(t) for t in targets if t.exists()]
        if existing and not slicer.util.confirmOkCancelDisplay(
                "These files exist:\n" + "\n".join(existing) + "\n\nReplace them?", windowTitle="LuDosimetry"):
            return
        self._runAndShow(lambda: write(bool(existing)), lambda written: "Written: " + ", ".join(map(str, written)))

    def _fillTable(self, table, headers: Sequence[str], rows: Sequence[Sequence[Any]],
                   attributes: Optional[Sequence[str]] = None) -> None:
        """Headers and rows of cells (text as is, numbers formatted for the table) into a QTableWidget."""
        from LuDosimetryLib.result_tables import format_value

        table.setColumnCount(len(headers))
        table.setHorizontalHeaderLabels(list(headers))
        table.setRowCount(len(rows))
        for rowIndex, row in enumerate(rows):
            for columnIndex, value in enumerate(row):
                attribute = attributes[columnIndex] if attributes else ""
                item = qt.QTableWidgetItem(value if isinstance(value, str) else format_value(attribute, value))
                if value is not None and not isinstance(value, str):
                    item.setTextAlignment(qt.Qt.AlignRight | qt.Qt.AlignVCenter)
                table.setItem(rowIndex, columnIndex, item)
        table.resizeColumnsToContents()

    def showResults(self, results) -> None:
        """Fill the results and fits tables from a run's results; show the TAC and DVH charts."""
        from LuDosimetryLib.result_tables import FIT_COLUMNS, VOI_COLUMN, fit_rows, result_columns_for, result_rows

        columns = result_columns_for(results.vois)
        self._fillTable(self.ui.resultsTableWidget, [VOI_COLUMN] + [title for _, title in columns],
                        [[name] + values for name, values in result_rows(results.vois, columns)],
                        [VOI_COLUMN] + [attribute for attribute, _ in columns])
        self._fillTable(self.ui.fitsTableWidget, [VOI_COLUMN] + [title for _, title in FIT_COLUMNS],
                        [[row["voi"]] + [row[key] for key, _ in FIT_COLUMNS] for row in fit_rows(results.vois)],
                        [VOI_COLUMN] + [key for key, _ in FIT_COLUMNS])
        rows = self.session.whole_body_rows(results)
        self._fillTable(self.ui.wholeBodyTableWidget, rows[0], rows[1:], ["", "", "tia_bq_s", "", "", ""])
        nodes = self.session.last_nodes
        if nodes.get("dose") is not None:
            background = nodes["spect"] if nodes.get("spect") is not None else nodes["dose"]
            slicer.util.setSliceViewerLayers(background=background, foreground=nodes["dose"],
                                             foregroundOpacity=0.5, fit=True)
        self._showCharts()

    # ----------------------------------------------------------------------------- Planar view (#14)

    def onShowPlanarViewButton(self) -> None:
        """The chosen planar session's image (Bq per pixel) with its VOI regions, in the coronal slice view."""
        from LuDosimetryLib.errors import LuDosimetryError
        try:
            volume, segmentation = self.session.show_planar_view(self.ui.planarSessionSpinBox.value,
                                                                 self._outputDirectory())
        except LuDosimetryError as error:
            self._showError(error)
            return
        slicer.util.setSliceViewerLayers(background=volume, foreground=None, fit=True)
        segmentation.GetDisplayNode().SetVisibility(True)
        self._checkCanRun()

    def onPlanarRegionsEditButton(self) -> None:
        """Open Segment Editor on the shown planar session's regions and image."""
        if self.ui.planarSessionSpinBox.value not in self.session.planar_view_nodes:
            self.onShowPlanarViewButton()
        shown = self.session.planar_view_nodes.get(self.ui.planarSessionSpinBox.value)
        if shown is not None:
            self._openSegmentEditor(shown[1])

    def onPlanarRecomputeButton(self) -> None:
        """Rerun with the planar regions of the views shown (edited or not) into ``<output folder>-edited``."""
        self._recomputeEdited(lambda study, out, options, overwrite, progress:
                              self.session.recompute_with_edited_planar_regions(
                                  study, out, options, overwrite=overwrite, progress=progress), "planar regions")

    # --------------------------------------------------------------------------------------- Cycles

    def onCyclesAddButton(self) -> None:
        files = qt.QFileDialog.getOpenFileNames(slicer.util.mainWindow(), "results.json of each cycle",
                                                str(self._outputDirectory() or "."), "LuDosimetry results (*.json)")
        listed = {self.ui.cyclesListWidget.item(k).text() for k in range(self.ui.cyclesListWidget.count)}
        self.ui.cyclesListWidget.addItems([f for f in files if f not in listed])
        self._checkCanRun()

    def onCyclesRemoveButton(self) -> None:
        for item in self.ui.cyclesListWidget.selectedItems():
            self.ui.cyclesListWidget.takeItem(self.ui.cyclesListWidget.row(item))
        self._checkCanRun()

    def onCyclesComputeButton(self) -> None:
        """Cumulative dose and BED of the listed cycles, the further cycles and their arithmetic."""
        from LuDosimetryLib.cycles import arithmetic_lines, summary_table_rows
        from LuDosimetryLib.errors import LuDosimetryError
        from LuDosimetryLib.result_tables import MISSING_TEXT

        paths = [self.ui.cyclesListWidget.item(k).text() for k in range(self.ui.cyclesListWidget.count)]
        try:
            summary = self.session.cycle_summary(paths, self.ui.cyclesNextActivitySpinBox.value or None,
                                                 self.ui.cyclesKidneyRiskCheckBox.checked,
                                                 strict=bool(self._parameterNode and self._parameterNode.strict))
        except LuDosimetryError as error:
            self._showError(error)
            return
        rows = summary_table_rows(summary)
        self._fillTable(self.ui.cyclesTableWidget, rows[0],
                        [[cell or MISSING_TEXT for cell in row] for row in rows[1:]])
        self.ui.cyclesArithmeticLabel.text = "\n".join(
            arithmetic_lines(summary) + [f"Assumed: {a.message()}" for a in summary.assumptions])

    def _showCharts(self) -> None:
        tac, dvh = self.session.chart_nodes()
        for plotWidget, chartNode, tag in ((self.ui.tacPlotWidget, tac, TAC_PLOT_VIEW_TAG),
                                           (self.ui.dvhPlotWidget, dvh, DVH_PLOT_VIEW_TAG)):
            if chartNode is None:
                continue
            scene = slicer.mrmlScene
            viewNode = scene.GetSingletonNode(tag, "vtkMRMLPlotViewNode")
            if viewNode is None:
                viewNode = scene.CreateNodeByClass("vtkMRMLPlotViewNode")
                viewNode.SetSingletonTag(tag)
                viewNode.SetName(tag)
                scene.AddNode(viewNode)
                viewNode.UnRegister(None)  # CreateNodeByClass gave a reference of its own
            viewNode.SetPlotChartNodeID(chartNode.GetID())
            plotWidget.setMRMLScene(scene)
            plotWidget.setMRMLPlotViewNode(viewNode)


#
# LuDosimetryLogic
#


class LuDosimetryLogic(ScriptedLoadableModuleLogic):
    """The module's logic: the parameter node, and :attr:`session`, a
    :class:`LuDosimetryLib.mrml.session.DosimetrySession` on the scene that does the work.

    From the Python console: ``logic = slicer.util.getModuleLogic("LuDosimetry")``, then
    ``logic.session.run(study, out, load_time_points=True)``, ``logic.runFromParameters(study, out)``.
    """

    def __init__(self, scene=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        from LuDosimetryLib.mrml.session import DosimetrySession

        self.session = DosimetrySession(scene if scene is not None else slicer.mrmlScene)

    def getParameterNode(self):
        return LuDosimetryParameterNode(super().getParameterNode())

    def runFromParameters(self, parameterNode=None, progress=None, **libraryValues):
        """Run with the options of a parameter node (this module's by default)."""
        node = parameterNode or self.getParameterNode()
        return self.session.run(node.studyDirectory, node.outputDirectory,
                                options.options_from_panel(node, "run", **libraryValues), overwrite=node.overwrite,
                                progress=progress, load_time_points=True)


#
# LuDosimetryTest
#


class LuDosimetryTest(ScriptedLoadableModuleTest):
    """Runs the module on the synthetic patient of LuDosimetryLib (installs the library's dependencies)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_LuDosimetryDependencies, self.test_LuDosimetryErrors,
                     self.test_LuDosimetrySyntheticPatient):
            self.setUp()
            test()

    def test_LuDosimetryDependencies(self):
        missing = dependencies.missing_requirements()
        if missing:
            slicer.util.pip_install(missing)
            importlib.invalidate_caches()
        self.assertEqual(dependencies.missing_requirements(), [])

    def test_LuDosimetryErrors(self):
        import tempfile

        from LuDosimetryLib.errors import LuDosimetryError, OptionError

        logic = LuDosimetryLogic()
        node = logic.getParameterNode()
        with tempfile.TemporaryDirectory(dir=slicer.app.temporaryPath) as tmp:
            emptyStudy = pathlib.Path(tmp) / "empty"
            emptyStudy.mkdir()
            with self.assertRaises(LuDosimetryError):
                logic.session.run(emptyStudy, pathlib.Path(tmp) / "out")
            node.studyDirectory, node.outputDirectory, node.pvc = str(emptyStudy), str(pathlib.Path(tmp) / "o"), "gtm"
            with self.assertRaises(OptionError):  # gtm without the PSF FWHM, refused before reading the study
                logic.runFromParameters(node)
        self.assertEqual(logic.session.last_nodes, {})

    def test_LuDosimetrySyntheticPatient(self):
        import math
        import tempfile

        from LuDosimetryLib.phantom import write_synthetic_patient
        from LuDosimetryLib.pipeline import run_study
        from LuDosimetryLib.result_tables import RESULT_COLUMNS, result_rows

        self.delayDisplay("Writing the synthetic patient")
        with tempfile.TemporaryDirectory(dir=slicer.app.temporaryPath) as tmp:
            study = write_synthetic_patient(pathlib.Path(tmp) / "study", seed=0, fast=True)
            outDir = pathlib.Path(tmp) / "out"
            self.delayDisplay("Running the logic")
            fractions = []
            logic = LuDosimetryLogic()
            results = logic.session.run(study, outDir, progress=lambda fraction, message: fractions.append(fraction))
            self.assertTrue((outDir / "results.json").is_file())
            self.assertTrue(fractions and fractions[-1] == 1.0)
            self.assertEqual(fractions, sorted(fractions))
            for key in ("dose", "tia", "table"):
                self.assertIsNotNone(logic.session.last_nodes.get(key), key)
            doseArray = slicer.util.arrayFromVolume(logic.session.last_nodes["dose"])
            self.assertEqual(doseArray.shape, results.dose_gy.GetSize()[::-1])
            # The table in the scene holds what run_study gives when called directly.
            expected = result_rows(run_study(study).vois)
            table = logic.session.last_nodes["table"]
            self.assertEqual(table.GetNumberOfRows(), len(expected))
            for row, (voiName, values) in enumerate(expected):
                self.assertEqual(table.GetCellText(row, 0), voiName)
                for (attribute, title), value in zip(RESULT_COLUMNS, values):
                    cell = table.GetTable().GetColumnByName(title).GetValue(row)
                    if isinstance(value, str):
                        self.assertEqual(cell, value, f"{voiName} {attribute}")
                    elif value is not None:
                        self.assertTrue(math.isclose(cell, float(value), rel_tol=1e-9, abs_tol=1e-12))
        self.delayDisplay("Test passed")
