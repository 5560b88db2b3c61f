"""LuDosimetry: the 3D Slicer module over LuDosimetryLib (Lu-177 DOTATATE patient-specific dosimetry).

The module is a thin shell. The panel has the sections a user works down: Study (a study of Slicer's
DICOM database or a folder, its inventory, the injection), Reconstruction (when the study holds
projections), Registration (reference time point, none/rigid/deformable, VOIs per time point or
propagated from the reference, a check view of each registered time point over the reference), VOIs
(one segmentation per time point, Segment Editor, recompute with the edited VOIs), Fits and TIA (TIA
map per VOI or per voxel, reduced time points, the model of each VOI, TAC plot), Dose, and Results
(table, DVH plot, exports). The logic calls :func:`LuDosimetryLib.pipeline.run_study` and
:func:`LuDosimetryLib.pipeline.write_outputs`, :mod:`LuDosimetryLib.mrml` puts the results in the scene.
No physics happens here.

LuDosimetryLib is imported inside the functions that need it: the module must load (and its panel
show) even before the library's dependencies are installed in Slicer's Python.
"""
import csv
import importlib.util
import io
import logging
import math
import os
import pathlib
import shutil
import tempfile
import traceback
from datetime import datetime
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

#: Per-VOI quantities shown after RESULT_COLUMNS only when a run gives them (reduced time points: the TIA
#: of the fit on every time point and the relative difference of the reduced TIA from it).
OPTIONAL_RESULT_COLUMNS: Tuple[Tuple[str, str], ...] = (
    ("tia_full_bq_s", "TIA all time points (Bq·s)"),
    ("reduced_relative_difference", "Reduced vs all time points (relative)"),
)

#: Title of the VOI-name column.
VOI_COLUMN = "VOI"

#: Registration of the time points to the reference (RunOptions.registration).
REGISTRATION_METHODS: Tuple[str, ...] = ("none", "rigid", "deformable")

#: Where each time point's VOIs come from (RunOptions.vois).
VOI_MODES: Tuple[str, ...] = ("per-time-point", "reference-only")

#: How the TIA map is made (RunOptions.tia_map).
TIA_MAP_METHODS: Tuple[str, ...] = ("voi", "voxel")

#: TIA methods for a subset of time points (RunOptions.reduced_method; those of ``ludosimetry run``).
REDUCED_METHODS: Tuple[str, ...] = ("population_prior", "hanscheid", "madsen", "two_point")

#: Model choices of the per-VOI model table: (choice shown, the models of RunOptions.models_per_voi).
#: "auto" leaves the VOI to the AICc selection among the default models (not in models_per_voi).
MODEL_CHOICES: Tuple[Tuple[str, Optional[Tuple[str, ...]]], ...] = (
    ("auto", None),
    ("mono", ("mono_exponential",)),
    ("bi", ("bi_exponential",)),
    ("tri", ("tri_exponential",)),
    ("trapezoid", ("trapezoid",)),
)

#: Object name of the per-VOI model table in the .ui (its parameter connector is tied to this widget).
VOI_MODELS_TABLE = "voiModelsTableWidget"

#: Columns of the study inventory table: (key of a row from :func:`inventoryRows`, column title).
INVENTORY_COLUMNS: Tuple[Tuple[str, str], ...] = (
    ("time_point", "Time point"),
    ("hours_post_injection", "Hours p.i."),
    ("role", "Role"),
    ("modality", "Modality"),
    ("description", "Description"),
    ("code", "Code"),
    ("files", "Files"),
)

#: Columns of the fits table: (key of a row from :func:`fitRows`, column title).
FIT_COLUMNS: Tuple[Tuple[str, str], ...] = (
    ("fit_model", "Model"),
    ("effective_half_life_h", "Effective half-life (h)"),
    ("tia_bq_s", "TIA (Bq·s)"),
    ("tia_se_bq_s", "TIA SE (Bq·s)"),
    ("tiac_h", "TIAC (h)"),
    ("fit_warnings", "Warnings"),
)

#: Packages of the reconstruction (heavy: installed only when the user asks), in install order:
#: torch first (so that pytomography does not bring another build of it), then pytomography.
RECON_PACKAGES: Tuple[Tuple[str, str], ...] = (
    ("torch", "torch==2.13.0"),
    ("pytomography", "pytomography"),
)

#: Files the Results exports copy out of a run's output folder (written by write_outputs).
RTDOSE_FILE = "rtdose.dcm"
RESULTS_FILE = "results.json"
DVH_FILE = "dvh.csv"
VOI_RESULTS_FILE = "voi_results.csv"

#: Singleton tags of the plot view nodes that show the charts in the panel.
TAC_PLOT_VIEW_TAG = "LuDosimetryTACPlotView"
DVH_PLOT_VIEW_TAG = "LuDosimetryDVHPlotView"

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
Work down the sections. Study: pick a study of the DICOM database (its files are linked into a temporary
folder, never changed) or a study folder (SPECT and CT of each time point, RTSTRUCT of organs and lesions),
check the inventory (time points, hours after injection) and, if needed, the injected activity and time.
Reconstruction (when the study holds projections): OSEM/BSREM with scatter and PSF options. Registration:
reference time point, none/rigid/deformable, VOIs of each time point or the reference's propagated, and a
check view (a registered time point over the reference). VOIs: each time point's segmentation, Segment
Editor, Recompute with edited VOIs. Fits and TIA: TIA map from the VOI fits or per voxel, reduced time
points (e.g. 2,3) with their method, the model of each VOI (auto = AICc), TAC plot. Dose:
dose-voxel kernel (dvk) or local deposition (ldm), density correction. Results: per-VOI table, DVH plot,
export of the RT Dose, the edited VOIs (RTSTRUCT), CSV and results.json.
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


@parameterNodeGuiConnector
class QDateTimeEditToStrConnector(GuiConnector):
    """Connects a QDateTimeEdit to a ``str`` parameter holding an ISO 8601 date/time ("" = not set).

    The widget's minimum date/time stands for "not set" (shown as its specialValueText).
    """

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return type(widget) == qt.QDateTimeEdit and unannotatedType(datatype) == str

    @staticmethod
    def create(widget, datatype):
        if QDateTimeEditToStrConnector.canRepresent(widget, datatype):
            return QDateTimeEditToStrConnector(widget)
        return None

    def __init__(self, widget):
        super().__init__()
        self._widget = widget

    def _connect(self):
        self._widget.dateTimeChanged.connect(self.changed)

    def _disconnect(self):
        self._widget.dateTimeChanged.disconnect(self.changed)

    def widget(self):
        return self._widget

    def read(self) -> str:
        if self._widget.dateTime.toMSecsSinceEpoch() == self._widget.minimumDateTime.toMSecsSinceEpoch():
            return ""
        return self._widget.dateTime.toString("yyyy-MM-dd'T'HH:mm:ss")

    def write(self, value: str) -> None:
        if self.read() == value:
            return
        if not value:
            self._widget.dateTime = self._widget.minimumDateTime
        else:
            self._widget.dateTime = qt.QDateTime.fromString(value[:19], "yyyy-MM-dd'T'HH:mm:ss")


@parameterNodeGuiConnector
class VoiModelsTableToStrConnector(GuiConnector):
    """Connects the per-VOI model table (the QTableWidget named :data:`VOI_MODELS_TABLE`: a row per VOI,
    its name and a combo box of :data:`MODEL_CHOICES`) to a ``str`` parameter holding the table as JSON,
    ``{"Liver": "trapezoid", "Kidney_L": "auto"}`` (see :func:`parseVoiModels`).

    The parameter decides the rows: writing a value with other VOI names rebuilds the table.
    """

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return (type(widget) == qt.QTableWidget and widget.objectName == VOI_MODELS_TABLE
                and unannotatedType(datatype) == str)

    @staticmethod
    def create(widget, datatype):
        if VoiModelsTableToStrConnector.canRepresent(widget, datatype):
            return VoiModelsTableToStrConnector(widget)
        return None

    def __init__(self, widget):
        super().__init__()
        self._widget = widget
        self._combos: List[Any] = []
        self._connected = False
        self._widget.setColumnCount(2)
        self._widget.setHorizontalHeaderLabels([VOI_COLUMN, "Model"])

    def _connect(self):
        self._connected = True
        for combo in self._combos:
            combo.currentIndexChanged.connect(self.changed)

    def _disconnect(self):
        self._connected = False
        for combo in self._combos:
            combo.currentIndexChanged.disconnect(self.changed)

    def widget(self):
        return self._widget

    def _names(self) -> List[str]:
        return [self._widget.item(row, 0).text() for row in range(self._widget.rowCount)]

    def read(self) -> str:
        return formatVoiModels({name: combo.currentText for name, combo in zip(self._names(), self._combos)})

    def write(self, value: str) -> None:
        try:
            models = parseVoiModels(value)
        except Exception:  # a hand-edited scene: show no rows rather than fail
            models = {}
        # Not connected while writing: the combo boxes' changes here are the parameter's, not the user's.
        wasConnected = self._connected
        if wasConnected:
            self._disconnect()
        if list(models) != self._names():
            self._widget.setRowCount(0)
            self._combos = []
            self._widget.setRowCount(len(models))
            for row, name in enumerate(models):
                item = qt.QTableWidgetItem(name)
                item.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsSelectable)
                self._widget.setItem(row, 0, item)
                combo = qt.QComboBox()
                for choice, _ in MODEL_CHOICES:
                    combo.addItem(choice)
                combo.toolTip = ("auto: the AICc choice among mono-, bi- and tri-exponential; or this model "
                                 "only (trapezoid: trapezoids with a physical-decay tail, no fit)")
                self._widget.setCellWidget(row, 1, combo)
                self._combos.append(combo)
        for combo, choice in zip(self._combos, models.values()):
            if combo.currentText != choice:
                combo.setCurrentIndex(combo.findText(choice))
        if wasConnected:
            self._connect()
        self._widget.resizeColumnsToContents()


@parameterNodeWrapper
class LuDosimetryParameterNode:
    """What the panel remembers in the scene.

    studyDirectory - folder with the DICOM study ("" when not chosen).
    outputDirectory - folder for results ("" when not chosen).
    doseMethod - "dvk" (dose-voxel kernel) or "ldm" (local deposition).
    injectedActivityMBq - override of the injected activity in MBq; 0 uses the DICOM headers.
    overwrite - replace the files of an earlier run in the output folder.
    referenceTimePoint - index (0-based) of the time point whose grid carries the dose.
    registrationMethod - "none", "rigid" or "deformable" (RunOptions.registration).
    voiMode - "per-time-point" or "reference-only" (RunOptions.vois: the reference's VOIs propagated).
    registrationCheckTimePoint - index (0-based) of the time point shown over the reference in the check view.
    pvc - partial-volume correction: "none" or "gtm" (needs psfFwhmMm, mm).
    densityCorrection - scale the dose by the CT density.
    dicomStudyInstanceUid - the study taken from Slicer's DICOM database ("" for a study folder).
    injectionTime - override of the injection date/time, ISO 8601 ("" uses the DICOM headers).
    reconAlgorithm, reconIterations, reconSubsets, reconScatter, reconPsf - reconstruction options.
    voiTimePoint - index (0-based) of the time point shown in the VOIs section.
    voiSegmentation - that time point's VOI segmentation.
    tiaMap - "voi" (VOI fits spread over the VOI) or "voxel" (voxel-level fits) (RunOptions.tia_map).
    reducedTimePoints - time points (1-based) used for the TIA, e.g. "2,3"; "" for all (RunOptions.time_points).
    reducedMethod - TIA method for reduced time points (RunOptions.reduced_method).
    voiModels - the model of each VOI as JSON {"Liver": "trapezoid", ...}; "auto" = AICc
        (RunOptions.models_per_voi holds the others).
    kernelFile - a dose voxel kernel file computed elsewhere (Interfile .hdr/.img or a voxel S-value
        table, e.g. a Monte Carlo kernel) for the DVK dose; "" uses the kernel LuDosimetry builds
        (RunOptions.kernel_path).
    kernelDensityGMl - density (g/mL) of the medium that kernel file was made for (RunOptions.kernel_density_g_ml).
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
    dicomStudyInstanceUid: str = ""
    injectionTime: str = ""
    reconAlgorithm: Annotated[str, Choice(["osem", "bsrem"])] = "osem"
    reconIterations: Annotated[int, WithinRange(1, 100)] = 4
    reconSubsets: Annotated[int, WithinRange(1, 64)] = 8
    reconScatter: Annotated[str, Choice(["tew", "dew", "none"])] = "tew"
    reconPsf: bool = True
    voiTimePoint: Annotated[int, WithinRange(0, 9)] = 0
    voiSegmentation: slicer.vtkMRMLSegmentationNode
    registrationMethod: Annotated[str, Choice(["none", "rigid", "deformable"])] = "none"
    voiMode: Annotated[str, Choice(["per-time-point", "reference-only"])] = "per-time-point"
    registrationCheckTimePoint: Annotated[int, WithinRange(0, 9)] = 1
    tiaMap: Annotated[str, Choice(["voi", "voxel"])] = "voi"
    reducedTimePoints: str = ""
    reducedMethod: Annotated[str, Choice(["population_prior", "hanscheid", "madsen", "two_point"])] = "population_prior"
    voiModels: str = ""
    kernelFile: str = ""
    kernelDensityGMl: Annotated[float, WithinRange(0.01, 25.0)] = 1.0


#
# LuDosimetryWidget
#


class LuDosimetryWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: study, reconstruction, registration, VOIs, fits, dose, Run/Cancel, progress and results.

    Every option lives in the parameter node (saved with the scene); the widget only moves values between
    the panel and the logic. No computation here.
    """

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
        self.ui.dicomRefreshButton.connect("clicked(bool)", self.onDicomRefreshButton)
        self.ui.dicomUseStudyButton.connect("clicked(bool)", self.onDicomUseStudyButton)
        self.ui.scanStudyButton.connect("clicked(bool)", self.onScanStudyButton)
        self.ui.reconstructButton.connect("clicked(bool)", self.onReconstructButton)
        self.ui.segmentEditorButton.connect("clicked(bool)", self.onSegmentEditorButton)
        self.ui.exportRtstructButton.connect("clicked(bool)", self.onExportRtstructButton)
        self.ui.exportRtDoseButton.connect("clicked(bool)", self.onExportRtDoseButton)
        self.ui.exportCsvButton.connect("clicked(bool)", self.onExportCsvButton)
        self.ui.exportReportButton.connect("clicked(bool)", self.onExportReportButton)
        self.ui.showRegistrationCheckButton.connect("clicked(bool)", self.onShowRegistrationCheckButton)

        # "Not set" of the injection date/time is the lowest date (shown as "from DICOM headers").
        self.ui.injectionTimeEdit.minimumDateTime = qt.QDateTime(qt.QDate(2000, 1, 1), qt.QTime(0, 0, 0))
        self.ui.injectionTimeEdit.dateTime = self.ui.injectionTimeEdit.minimumDateTime

        self.ui.progressBar.setValue(0)
        self.ui.statusLabel.text = ""
        self._setupTable(self.ui.resultsTableWidget, [VOI_COLUMN] + [title for _, title in RESULT_COLUMNS])
        self._setupTable(self.ui.inventoryTableWidget, [title for _, title in INVENTORY_COLUMNS])
        self._setupTable(self.ui.fitsTableWidget, [VOI_COLUMN] + [title for _, title in FIT_COLUMNS])
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

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        self.logic.timePointItems = []
        self.logic.lastNodes = {}
        self.logic.registrationNodes = {}
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
            self._lastVoiTimePoint = self._parameterNode.voiTimePoint
            self._lastVoiSegmentation = self._parameterNode.voiSegmentation
            self._restoreFromScene()
        self._checkCanRun()

    def _restoreFromScene(self) -> None:
        """After a scene (.mrb) is loaded: the study's inventory, the charts and the output files again."""
        node = self._parameterNode
        if node.studyDirectory.strip() and pathlib.Path(node.studyDirectory).is_dir():
            self._scanStudy(quiet=True)
        tac, dvh = self.logic.chartNodes()
        if tac is not None:
            self._showChart(self.ui.tacPlotWidget, tac, TAC_PLOT_VIEW_TAG)
        if dvh is not None:
            self._showChart(self.ui.dvhPlotWidget, dvh, DVH_PLOT_VIEW_TAG)

    def _checkCanRun(self, caller=None, event=None) -> None:
        node = self._parameterNode
        ready = bool(node and node.studyDirectory.strip() and node.outputDirectory.strip())
        idle = not self._running
        segmentations = self.logic.segmentationNodesByTimePoint() if self.logic else []
        self.ui.runButton.enabled = ready and idle
        self.ui.cancelButton.enabled = self._running
        self.ui.recomputeButton.enabled = (ready and idle and bool(segmentations)
                                           and all(n is not None for n in segmentations))
        for section in (self.ui.studyCollapsibleButton, self.ui.registrationCollapsibleButton,
                        self.ui.voisCollapsibleButton, self.ui.fitsCollapsibleButton, self.ui.doseCollapsibleButton):
            section.enabled = idle
        projections = hasProjections(self._inventoryJson)
        self.ui.reconstructionCollapsibleButton.enabled = idle and projections
        self.ui.reconstructButton.enabled = idle and projections and bool(node and node.outputDirectory.strip())
        hasSegmentation = bool(node and node.voiSegmentation is not None)
        self.ui.segmentEditorButton.enabled = idle and hasSegmentation
        self.ui.exportRtstructButton.enabled = idle and hasSegmentation and bool(node.studyDirectory.strip())
        registered = self.logic.registeredSpectNodes() if self.logic else {}
        self.ui.showRegistrationCheckButton.enabled = idle and bool(registered)
        self.ui.showRegistrationCheckButton.toolTip = (
            "Show the chosen time point's SPECT, carried to the reference grid by the registration, over the "
            "reference SPECT (50 % opacity) in the slice views." if registered else
            "Run the dosimetry with a rigid or deformable registration first.")
        if node:
            self.ui.voiModeComboBox.enabled = idle and node.registrationMethod != "none"
            self.ui.reducedMethodComboBox.enabled = idle and bool(node.reducedTimePoints.strip())
            # A kernel file applies to the kernel convolution only; its density only with a file.
            self.ui.kernelFilePathLineEdit.enabled = idle and node.doseMethod == "dvk"
            self.ui.kernelDensitySpinBox.enabled = idle and node.doseMethod == "dvk" and bool(node.kernelFile.strip())
        outputs = self._outputDirectory()
        for button, name in ((self.ui.exportRtDoseButton, RTDOSE_FILE), (self.ui.exportCsvButton, RESULTS_FILE),
                             (self.ui.exportReportButton, RESULTS_FILE)):
            button.enabled = idle and outputs is not None and (outputs / name).is_file()
        self.ui.voiTimePointSpinBox.maximum = max(len(segmentations) - 1, 0)
        self.ui.registrationCheckTimePointSpinBox.maximum = max(self.ui.referenceTimePointSpinBox.maximum, 1)
        self.ui.runButton.toolTip = ("Compute TACs, TIA, absorbed dose and DVHs and write them to the output folder."
                                     if ready else "Choose the study (DICOM database or folder) and the output folder.")

    def _outputDirectory(self) -> Optional[pathlib.Path]:
        """The folder of the last run's outputs (this session's run, else the panel's output folder)."""
        if self.logic and self.logic.lastOutputDirectory is not None:
            return pathlib.Path(self.logic.lastOutputDirectory)
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
        node = self._parameterNode
        if not node:
            return
        if node.studyDirectory != self._lastStudyDirectory:
            self._lastStudyDirectory = node.studyDirectory
            if node.studyDirectory.strip() and not node.outputDirectory.strip():
                node.outputDirectory = str(defaultOutputDirectory(node.studyDirectory))
            self._inventoryJson = None
            self.ui.inventoryTableWidget.setRowCount(0)
            if node.studyDirectory.strip() and pathlib.Path(node.studyDirectory).is_dir():
                self._scanStudy(quiet=True)
        if node.voiTimePoint != self._lastVoiTimePoint:
            # Another time point: show its segmentation.
            self._lastVoiTimePoint = node.voiTimePoint
            segmentations = self.logic.segmentationNodesByTimePoint()
            shown = segmentations[node.voiTimePoint] if node.voiTimePoint < len(segmentations) else None
            self._lastVoiSegmentation = shown
            node.voiSegmentation = shown
        elif node.voiSegmentation is not self._lastVoiSegmentation:
            # The user chose another segmentation for this time point.
            self._lastVoiSegmentation = node.voiSegmentation
            if node.voiSegmentation is not None:
                self.logic.setSegmentationForTimePoint(node.voiTimePoint, node.voiSegmentation)
        self._checkCanRun()

    # ---------------------------------------------------------------------------------------- Study

    def onDicomRefreshButton(self) -> None:
        """Fill the study list from Slicer's DICOM database."""
        combo = self.ui.dicomStudyComboBox
        combo.clear()
        database = getattr(slicer, "dicomDatabase", None)
        self._dicomStudies = self.logic.dicomStudies(database) if database is not None else []
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
        if not node or not (0 <= index < len(self._dicomStudies)):
            return
        if not self._ensureDependencies():
            return
        from LuDosimetryLib.errors import LuDosimetryError

        study = self._dicomStudies[index]
        try:
            view = self.logic.studyViewFromDatabase(study["study_instance_uid"], database=slicer.dicomDatabase)
        except LuDosimetryError as error:
            slicer.util.errorDisplay(str(error), windowTitle="LuDosimetry")
            return
        # The output folder first: the one proposed beside a study folder would lie in the temporary view.
        if not node.outputDirectory.strip():
            node.outputDirectory = str(defaultOutputDirectory(
                pathlib.Path(slicer.app.defaultScenePath) / safeFolderName(study["label"])))
        node.dicomStudyInstanceUid = study["study_instance_uid"]
        node.studyDirectory = str(view)

    def onScanStudyButton(self) -> None:
        self._scanStudy(quiet=False)

    def _scanStudy(self, quiet: bool) -> None:
        """Inventory of the study folder into the table (errors shown unless ``quiet``)."""
        node = self._parameterNode
        if not node or missingRequirements():
            return
        from LuDosimetryLib.errors import LuDosimetryError

        try:
            with slicer.util.WaitCursor():
                inventory = self.logic.inventory(node.studyDirectory, activityMBqToBq(node.injectedActivityMBq),
                                                 injectionTimeFromText(node.injectionTime))
        except LuDosimetryError as error:
            self._inventoryJson = None
            self.ui.inventoryTableWidget.setRowCount(0)
            if not quiet:
                slicer.util.errorDisplay(str(error), windowTitle="LuDosimetry")
            return
        self._inventoryJson = inventory.to_json()
        self._fillTable(self.ui.inventoryTableWidget,
                        [[row[key] for key, _ in INVENTORY_COLUMNS] for row in inventoryRows(self._inventoryJson)])
        timePoints = len(self._inventoryJson["time_points"])
        self.ui.referenceTimePointSpinBox.maximum = max(timePoints - 1, 0)
        names = self.logic.voiNames(inventory, node.referenceTimePoint)
        if names:
            node.voiModels = voiModelsWithNames(node.voiModels, names)
        projections = hasProjections(self._inventoryJson)
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
        if self._running or not node:
            return
        unavailable = reconstructionUnavailableReason()
        if unavailable:
            slicer.util.errorDisplay(unavailable, windowTitle="LuDosimetry")
            return
        if not self._ensureReconstructionDependencies():
            return
        from LuDosimetryLib.errors import CancelledError, LuDosimetryError

        self._setRunning(True)
        try:
            view = self.logic.reconstruct(node.studyDirectory, defaultReconstructionDirectory(node.outputDirectory),
                                          algorithm=node.reconAlgorithm, iterations=node.reconIterations,
                                          subsets=node.reconSubsets, scatter=node.reconScatter, psf=node.reconPsf,
                                          overwrite=node.overwrite, progress=self._onProgress)
        except CancelledError:
            self.ui.statusLabel.text = "Cancelled."
        except LuDosimetryError as error:
            self.ui.statusLabel.text = "Failed."
            slicer.util.errorDisplay(str(error), windowTitle="LuDosimetry")
        else:
            node.studyDirectory = str(view)  # the dosimetry now runs on the new reconstructions
            self.ui.statusLabel.text = f"Reconstructed; the study folder is now {view}"
        finally:
            self._setRunning(False)

    def _ensureReconstructionDependencies(self) -> bool:
        """Ask before installing torch and PyTomography (large downloads); True when both are there."""
        missing = missingRequirements(RECON_PACKAGES)
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
                "Reconstruction needs PyTorch and PyTomography, which are not installed yet:\n" + "\n".join(missing)
                + "\n\nThe download is large (PyTorch: several hundred MB) and takes minutes. Install them now?",
                windowTitle="LuDosimetry"):
            return False
        with slicer.util.tryWithErrorDisplay("Installing PyTorch/PyTomography failed.", waitCursor=True):
            for requirement in missing:  # in RECON_PACKAGES order: torch first
                slicer.util.pip_install(requirement)
            importlib.invalidate_caches()
            return not missingRequirements(RECON_PACKAGES)
        return False

    # ------------------------------------------------------------------------------------------ VOIs

    def onSegmentEditorButton(self) -> None:
        """Open Segment Editor on this time point's segmentation and SPECT."""
        node = self._parameterNode
        if not node or node.voiSegmentation is None:
            return
        segmentation = node.voiSegmentation
        source = self.logic.sourceVolumeForSegmentation(segmentation)
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
        from LuDosimetryLib.errors import LuDosimetryError

        path = self._askSavePath("Export edited VOIs as RTSTRUCT",
                                 pathlib.Path(node.outputDirectory or ".") / f"TP{node.voiTimePoint + 1}_edited_VOIs.dcm",
                                 "DICOM RTSTRUCT (*.dcm)")
        if not path:
            return
        try:
            with slicer.util.WaitCursor():
                written = self.logic.exportSegmentationAsRtstruct(node.voiSegmentation, path, node.voiTimePoint,
                                                                  study_dir=node.studyDirectory)
        except LuDosimetryError as error:
            slicer.util.errorDisplay(str(error), windowTitle="LuDosimetry")
        else:
            self.ui.statusLabel.text = f"Edited VOIs written to {written}"

    # ---------------------------------------------------------------------------------- Registration

    def onShowRegistrationCheckButton(self) -> None:
        """Reference SPECT as background, the chosen time point's registered SPECT as foreground (50 %)."""
        node = self._parameterNode
        if not node:
            return
        from LuDosimetryLib.errors import LuDosimetryError

        try:
            background, foreground = self.logic.registrationCheckLayers(node.registrationCheckTimePoint)
        except LuDosimetryError as error:
            slicer.util.errorDisplay(str(error), windowTitle="LuDosimetry")
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

    def _runOptionsFromPanel(self) -> Dict[str, Any]:
        node = self._parameterNode
        return dict(dose_method=node.doseMethod, injected_activity_bq=activityMBqToBq(node.injectedActivityMBq),
                    injection_time=injectionTimeFromText(node.injectionTime), overwrite=node.overwrite,
                    progress=self._onProgress, **self._pipelineOptions())

    def onRunButton(self) -> None:
        if self._running or not self._parameterNode:
            return
        node = self._parameterNode
        if not self._ensureDependencies():
            return
        before = self.logic.lastResults
        self._runAndShow(lambda: self.logic.run(node.studyDirectory, node.outputDirectory, load_time_points=True,
                                                **self._runOptionsFromPanel()),
                         f"Done. Results written to {node.outputDirectory}")
        if self.logic.lastResults is not before and getattr(self.logic.lastResults, "vois", None):
            # The model table lists the VOIs of the run (choices kept).
            node.voiModels = voiModelsWithNames(node.voiModels, list(self.logic.lastResults.vois))
        segmentations = self.logic.segmentationNodesByTimePoint()
        if segmentations:
            self._lastVoiTimePoint = 0
            self._lastVoiSegmentation = segmentations[0]
            node.voiTimePoint = 0
            node.voiSegmentation = segmentations[0]

    def _pipelineOptions(self) -> Dict[str, Any]:
        return pipelineOptionsFromParameters(self._parameterNode)

    def onRecomputeButton(self) -> None:
        """Rerun with the scene's VOI segmentations (one per time point) into ``<output folder>-edited``."""
        if self._running or not self._parameterNode:
            return
        node = self._parameterNode
        out = editedOutputDirectory(node.outputDirectory)
        self._runAndShow(lambda: self.logic.recomputeWithEditedVois(
            node.studyDirectory, self.logic.segmentationNodesByTimePoint(), out, **self._runOptionsFromPanel()),
            f"Done. Results with the edited VOIs written to {out}")

    def _runAndShow(self, compute: Callable[[], Any], doneText: str) -> None:
        """Run ``compute`` (a logic call) with progress and Cancel, then show its results or its error."""
        from LuDosimetryLib.errors import CancelledError, LuDosimetryError

        self._setRunning(True)
        try:
            results = compute()
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
            self.ui.statusLabel.text = doneText + (f" ({len(runWarnings)} warnings, see the Python console)"
                                                   if runWarnings else "")
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

    # -------------------------------------------------------------------------------------- Results

    def onExportRtDoseButton(self) -> None:
        self._export("Export RT Dose", "rtdose.dcm", "DICOM RT Dose (*.dcm)",
                     lambda path, overwrite: [self.logic.exportRtDose(self._outputDirectory(), path, overwrite)])

    def onExportReportButton(self) -> None:
        self._export("Export report", "results.json", "JSON (*.json)",
                     lambda path, overwrite: [self.logic.exportReport(self._outputDirectory(), path, overwrite)])

    def onExportCsvButton(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Export CSV into folder",
                                                     str(self._outputDirectory() or "."))
        if not folder:
            return
        targets = [pathlib.Path(folder) / DVH_FILE, pathlib.Path(folder) / VOI_RESULTS_FILE]
        self._confirmAndExport(targets, lambda overwrite: self.logic.exportCsv(self._outputDirectory(), folder,
                                                                               overwrite))

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

    def _export(self, title: str, defaultName: str, fileFilter: str, write) -> None:
        path = self._askSavePath(title, (self._outputDirectory() or pathlib.Path.home()).parent / defaultName,
                                 fileFilter)
        if path:
            self._confirmAndExport([pathlib.Path(path)], lambda overwrite: write(path, overwrite))

    def _confirmAndExport(self, targets: Sequence[pathlib.Path], write) -> None:
        """Ask before replacing existing files, then write (atomically, in the logic)."""
        from LuDosimetryLib.errors import LuDosimetryError

        existing = [str(t) for t in targets if t.exists()]
        if existing and not slicer.util.confirmOkCancelDisplay(
                "These files exist:\n" + "\n".join(existing) + "\n\nReplace them?", windowTitle="LuDosimetry"):
            return
        try:
            written = write(bool(existing))
        except LuDosimetryError as error:
            slicer.util.errorDisplay(str(error), windowTitle="LuDosimetry")
        else:
            self.ui.statusLabel.text = "Written: " + ", ".join(str(w) for w in written)

    def _setupTable(self, table, headers: Sequence[str]) -> None:
        table.setColumnCount(len(headers))
        table.setHorizontalHeaderLabels(list(headers))
        table.setRowCount(0)

    def _fillTable(self, table, rows: Sequence[Sequence[Any]], attributes: Optional[Sequence[str]] = None) -> None:
        """Rows of cells (text as is, numbers formatted by :func:`formatValue`) into a QTableWidget."""
        table.setRowCount(len(rows))
        for rowIndex, row in enumerate(rows):
            for columnIndex, value in enumerate(row):
                attribute = attributes[columnIndex] if attributes else ""
                item = qt.QTableWidgetItem(value if isinstance(value, str) else formatValue(attribute, value))
                if value is not None and not isinstance(value, str):
                    item.setTextAlignment(qt.Qt.AlignRight | qt.Qt.AlignVCenter)
                table.setItem(rowIndex, columnIndex, item)
        table.resizeColumnsToContents()

    def showResults(self, results) -> None:
        """Fill the results and fits tables from the results of run_study; show the TAC and DVH charts.

        The results table has the :data:`RESULT_COLUMNS` and, after a run on reduced time points, the
        :data:`OPTIONAL_RESULT_COLUMNS` (see :func:`resultColumnsFor`).
        """
        columns = resultColumnsFor(results)
        self._setupTable(self.ui.resultsTableWidget, [VOI_COLUMN] + [title for _, title in columns])
        self._fillTable(self.ui.resultsTableWidget,
                        [[name] + values for name, values in resultRows(results, columns)],
                        [VOI_COLUMN] + [attribute for attribute, _ in columns])
        self._fillTable(self.ui.fitsTableWidget,
                        [[row["voi"]] + [row[key] for key, _ in FIT_COLUMNS] for row in fitRows(results)],
                        [VOI_COLUMN] + [key for key, _ in FIT_COLUMNS])
        tac, dvh = self.logic.chartNodes()
        if tac is not None:
            self._showChart(self.ui.tacPlotWidget, tac, TAC_PLOT_VIEW_TAG)
        if dvh is not None:
            self._showChart(self.ui.dvhPlotWidget, dvh, DVH_PLOT_VIEW_TAG)

    def _showChart(self, plotWidget, chartNode, singletonTag: str) -> None:
        """Show a plot chart in one of the panel's plot widgets (through its own plot view node)."""
        scene = slicer.mrmlScene
        viewNode = scene.GetSingletonNode(singletonTag, "vtkMRMLPlotViewNode")
        if viewNode is None:
            viewNode = scene.CreateNodeByClass("vtkMRMLPlotViewNode")
            viewNode.SetSingletonTag(singletonTag)
            viewNode.SetName(singletonTag)
            scene.AddNode(viewNode)
            viewNode.UnRegister(None)  # CreateNodeByClass gave a reference of its own
        viewNode.SetPlotChartNodeID(chartNode.GetID())
        plotWidget.setMRMLScene(scene)
        plotWidget.setMRMLPlotViewNode(viewNode)


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


def editedOutputDirectory(outputDirectory) -> pathlib.Path:
    """The output folder of a recompute with edited VOIs: ``<output folder>-edited`` beside it."""
    out = pathlib.Path(outputDirectory)
    return out.with_name(out.name + "-edited")


def defaultReconstructionDirectory(outputDirectory) -> pathlib.Path:
    """Where reconstructions go: ``<output folder>-recon`` beside the output folder."""
    out = pathlib.Path(outputDirectory)
    return out.with_name(out.name + "-recon")


def safeFolderName(text: str) -> str:
    """A folder name made of the letters, digits, '-', '_' and '.' of ``text`` (others become '_')."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text)).strip("._")
    return name or "study"


def injectionTimeFromText(text: str) -> Optional[datetime]:
    """Injection date/time from the panel's ISO 8601 text; ``None`` (use the headers) when empty.

    Raises
    ------
    LuDosimetryLib.errors.StudyError
        The text is not an ISO 8601 date/time.
    """
    text = (text or "").strip()
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        from LuDosimetryLib.errors import StudyError
        raise StudyError(f"injection date/time {text!r} is not an ISO 8601 date/time (YYYY-MM-DDTHH:MM:SS)")


def inventoryRows(inventoryJson: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Rows of the inventory table from ``Inventory.to_json()``: one per series, in its order.

    Each row has the keys of :data:`INVENTORY_COLUMNS`: ``time_point`` ("TP<n>" or "" when the series
    joins none), ``hours_post_injection`` (of the series' time point, h; None when unknown), ``role``
    (with the projection form, e.g. "spect_projections (unaltered)"), ``modality``, ``description``,
    ``code`` ("" when none) and ``files`` (count).
    """
    if not inventoryJson:
        return []
    hours = {tp["index"]: tp.get("hours_post_injection") for tp in inventoryJson.get("time_points", [])}
    rows = []
    for series in inventoryJson.get("series", []):
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


def hasProjections(inventoryJson: Optional[Dict[str, Any]]) -> bool:
    """Whether an ``Inventory.to_json()`` lists SPECT projection series (Reconstruction is offered)."""
    return any(s.get("role") == "spect_projections" for s in (inventoryJson or {}).get("series", []))


def fitRows(results) -> List[Dict[str, Any]]:
    """Rows of the fits table: per VOI (``results.vois`` order) its name (key ``voi``) and the
    :data:`FIT_COLUMNS` values (fit warnings joined by "; ")."""
    rows = []
    for name, voi in results.vois.items():
        row: Dict[str, Any] = {"voi": str(name)}
        for key, _ in FIT_COLUMNS:
            value = getattr(voi, key, None)
            row[key] = "; ".join(str(w) for w in value) if key == "fit_warnings" else value
        rows.append(row)
    return rows


def reconstructionUnavailableReason() -> str:
    """"" when this version has LuDosimetryLib's reconstruction, else the sentence to show."""
    try:
        importReconstruction()
    except ImportError:
        return "Reconstruction is not available in this version of LuDosimetry."
    return ""


def importReconstruction():
    """``(reconstruct_study, ReconOptions)`` of LuDosimetryLib's reconstruction (ImportError when absent).

    Importing them imports neither torch nor PyTomography.
    """
    try:
        from LuDosimetryLib.recon import ReconOptions, reconstruct_study
    except ImportError:
        from LuDosimetryLib.recon.reconstruct import ReconOptions, reconstruct_study
    return reconstruct_study, ReconOptions


def makeStudyView(files: Sequence[str], folder) -> pathlib.Path:
    """A study folder made of links to ``files`` (copies where links cannot be made).

    The original files are never opened for writing. Links are named ``<n>_<file name>`` so that files
    of the same name from different folders do not collide.

    Parameters
    ----------
    files : sequence of path-like
        Existing files.
    folder : path-like
        New or empty folder.

    Raises
    ------
    LuDosimetryLib.errors.StudyError
        No files, or a file that does not exist.
    LuDosimetryLib.errors.OutputError
        ``folder`` exists and is not empty.
    """
    from LuDosimetryLib.errors import OutputError, StudyError

    folder = pathlib.Path(folder)
    files = [pathlib.Path(f) for f in files]
    if not files:
        raise StudyError("the study has no files", folder)
    for f in files:
        if not f.is_file():
            raise StudyError("file of the study does not exist", f)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise OutputError("exists and is not an empty folder; a study view needs a new folder", folder)
    folder.mkdir(parents=True, exist_ok=True)
    for k, f in enumerate(files, start=1):
        target = folder / f"{k:06d}_{f.name}"
        try:
            os.symlink(os.path.abspath(str(f)), str(target))
        except (OSError, NotImplementedError):
            shutil.copy2(str(f), str(target))
    return folder


def writeFileAtomically(path, data: bytes, overwrite: bool = False) -> pathlib.Path:
    """Write ``data`` to ``path`` through a temporary file beside it, renamed into place.

    Without ``overwrite`` an existing ``path`` is refused, also when it appears while writing (the
    temporary file is hard-linked to the name, which fails when the name exists).

    Raises
    ------
    LuDosimetryLib.errors.OutputError
        ``path`` exists (and ``overwrite`` is False), or its folder does not exist.
    """
    from LuDosimetryLib.errors import OutputError

    path = pathlib.Path(path)
    if path.exists() and (not overwrite or path.is_dir()):
        raise OutputError("exists; not overwritten" + (" (it is a folder)" if path.is_dir() else ""), path)
    if not path.parent.is_dir():
        raise OutputError("folder does not exist", path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        if overwrite:
            os.replace(tmp, str(path))
        else:
            try:
                os.link(tmp, str(path))
            except FileExistsError:
                raise OutputError("exists; not overwritten", path) from None
            except OSError:  # no hard links on this file system
                if path.exists():
                    raise OutputError("exists; not overwritten", path) from None
                os.replace(tmp, str(path))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def resultsCsvText(resultsJson: Dict[str, Any]) -> str:
    """The per-VOI results CSV: a row per VOI of ``results.json`` (its ``vois``), the VOI name then the
    :data:`RESULT_COLUMNS` values at full precision (empty where the library gives none), then the
    :data:`OPTIONAL_RESULT_COLUMNS` that some VOI has a value for."""
    vois = resultsJson.get("vois", {})
    columns = list(RESULT_COLUMNS) + [(attribute, title) for attribute, title in OPTIONAL_RESULT_COLUMNS
                                      if any(voi.get(attribute) is not None for voi in vois.values())]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([VOI_COLUMN] + [title for _, title in columns])
    for name, voi in vois.items():
        values = [voi.get(attribute) for attribute, _ in columns]
        writer.writerow([name] + ["" if v is None else (v if isinstance(v, str) else repr(float(v))) for v in values])
    return buffer.getvalue()


def missingRequirements(packages: Sequence[Tuple[str, str]] = REQUIRED_PACKAGES) -> List[str]:
    """Pip requirements of the packages that cannot be imported (found without importing them)."""
    return [requirement for moduleName, requirement in packages if importlib.util.find_spec(moduleName) is None]


def resultColumnsFor(results) -> List[Tuple[str, str]]:
    """The results table's columns for a run: :data:`RESULT_COLUMNS`, then each of
    :data:`OPTIONAL_RESULT_COLUMNS` that some VOI of ``results.vois`` has a value for (not None)."""
    vois = list(results.vois.values())
    return list(RESULT_COLUMNS) + [(attribute, title) for attribute, title in OPTIONAL_RESULT_COLUMNS
                                   if any(getattr(voi, attribute, None) is not None for voi in vois)]


def resultRows(results, columns: Sequence[Tuple[str, str]] = RESULT_COLUMNS) -> List[Tuple[str, List[Any]]]:
    """``[(voi name, [value of each ``columns`` attribute])]`` from ``results.vois``, in its order
    (:data:`RESULT_COLUMNS` by default; :func:`resultColumnsFor` gives the columns of a run).

    A quantity the library leaves out (or sets to None) is ``None`` here.
    """
    return [(str(name), [getattr(voi, attribute, None) for attribute, _ in columns])
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
    if attribute in ("tia_bq_s", "tia_full_bq_s"):
        return f"{value:.3e}"
    return f"{value:.4g}"


def timePointsFromText(text: str) -> Optional[Tuple[int, ...]]:
    """Reduced time points (1-based) from the panel's text, e.g. "2,3" → (2, 3); ``None`` (all time
    points) when empty. Spaces and semicolons are accepted as separators too.

    Raises
    ------
    LuDosimetryLib.errors.StudyError
        Not a list of positive whole numbers.
    """
    parts = [p for p in (text or "").replace(";", ",").replace(" ", ",").split(",") if p]
    if not parts:
        return None
    try:
        numbers = tuple(int(p) for p in parts)
    except ValueError:
        numbers = ()
    if not numbers or any(n < 1 for n in numbers):
        from LuDosimetryLib.errors import StudyError
        raise StudyError(f"time points {text!r} is not a list of time point numbers (1 = first), e.g. 2,3")
    return numbers


def parseVoiModels(text: str) -> Dict[str, str]:
    """The per-VOI model table from its parameter text (JSON ``{"VOI": "choice"}``, "" for none), in order.

    Raises
    ------
    LuDosimetryLib.errors.StudyError
        Not such a JSON object, or a choice that is not one of :data:`MODEL_CHOICES`.
    """
    import json

    from LuDosimetryLib.errors import StudyError

    if not (text or "").strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise StudyError(f"VOI models {text!r} is not a JSON object of VOI name to model")
    choices = [choice for choice, _ in MODEL_CHOICES]
    out: Dict[str, str] = {}
    for name, choice in value.items():
        if choice not in choices:
            raise StudyError(f"VOI {name!r}: model {choice!r} is not one of {', '.join(choices)}")
        out[str(name)] = str(choice)
    return out


def formatVoiModels(models: Dict[str, str]) -> str:
    """Parameter text of the per-VOI model table (inverse of :func:`parseVoiModels`); "" when empty."""
    import json

    return json.dumps(dict(models), ensure_ascii=False) if models else ""


def voiModelsWithNames(text: str, names: Sequence[str]) -> str:
    """The model table for the VOIs ``names`` (in that order): each keeps its earlier choice, a new VOI
    gets "auto", VOIs not in ``names`` are dropped. An unreadable ``text`` starts over."""
    try:
        current = parseVoiModels(text)
    except Exception:
        current = {}
    return formatVoiModels({str(name): current.get(str(name), "auto") for name in names})


def modelsPerVoiFromText(text: str) -> Optional[Dict[str, Tuple[str, ...]]]:
    """``RunOptions.models_per_voi`` from the model table: ``{"Liver": ("trapezoid",)}`` for each VOI not on
    "auto"; ``None`` when every VOI is on auto."""
    models = dict(MODEL_CHOICES)
    chosen = {name: tuple(models[choice]) for name, choice in parseVoiModels(text).items()
              if models[choice] is not None}
    return chosen or None


def pipelineOptionsFromParameters(node) -> Dict[str, Any]:
    """The pipeline options of the panel (keyword arguments of :meth:`LuDosimetryLogic.run` besides the
    study, the injection and the output) from a parameter node (or any object with its attributes).

    Raises
    ------
    LuDosimetryLib.errors.StudyError
        Unreadable reduced time points or VOI models.
    """
    return dict(pvc=node.pvc, psf_fwhm_mm=node.psfFwhmMm if node.psfFwhmMm > 0 else None,
                density_correction=node.densityCorrection, reference_time_point=node.referenceTimePoint,
                registration=node.registrationMethod, vois=node.voiMode, tia_map=node.tiaMap,
                time_points=timePointsFromText(node.reducedTimePoints), reduced_method=node.reducedMethod,
                models_per_voi=modelsPerVoiFromText(node.voiModels),
                kernel_path=node.kernelFile.strip() or None, kernel_density_g_ml=node.kernelDensityGMl)


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
    nodes = mrml.add_results(scene, results, name_prefix=namePrefix, table_columns=resultColumnsFor(results))
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
    :attr:`lastResults` the results, :attr:`lastOutputDirectory` the folder written,
    :attr:`timePointItems` the per-time-point nodes (SPECT, CT, segmentation) when the study was loaded,
    and :attr:`registrationNodes` the registration check view (``{time point: SPECT volume carried to the
    reference grid}``) after a run with a registration.

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
        self.registrationNodes: Dict[int, Any] = {}
        self.lastOutputDirectory: Optional[pathlib.Path] = None
        self._scene = scene

    @property
    def scene(self):
        return self._scene if self._scene is not None else getattr(slicer, "mrmlScene", None)

    def getParameterNode(self):
        return LuDosimetryParameterNode(super().getParameterNode())

    @staticmethod
    def runOptions(dose_method: str = "dvk", injected_activity_bq: Optional[float] = None, injection_time=None,
                   spect_series_uid=None, pvc: str = "none", psf_fwhm_mm: Optional[float] = None,
                   density_correction: bool = True, reference_time_point: int = 0,
                   masks_per_time_point: Optional[List[Dict[str, Any]]] = None, registration: str = "none",
                   vois: str = "per-time-point", tia_map: str = "voi", time_points: Optional[Sequence[int]] = None,
                   reduced_method: str = "population_prior",
                   models_per_voi: Optional[Dict[str, Sequence[str]]] = None,
                   kernel_path: Optional[str] = None, kernel_density_g_ml: float = 1.0):
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
        if masks_per_time_point is not None:
            options["masks_per_time_point"] = list(masks_per_time_point)
        if registration != "none":
            options["registration"] = registration
        if vois != "per-time-point":
            options["vois"] = vois
        if tia_map != "voi":
            options["tia_map"] = tia_map
        if time_points is not None:
            options.update(time_points=tuple(int(t) for t in time_points), reduced_method=reduced_method)
        if models_per_voi:
            options["models_per_voi"] = {str(name): tuple(models) for name, models in models_per_voi.items()}
        if kernel_path:
            options.update(kernel_path=str(kernel_path), kernel_density_g_ml=float(kernel_density_g_ml))
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
            load_time_points: bool = False, masks_per_time_point: Optional[List[Dict[str, Any]]] = None,
            registration: str = "none", vois: str = "per-time-point", tia_map: str = "voi",
            time_points: Optional[Sequence[int]] = None, reduced_method: str = "population_prior",
            models_per_voi: Optional[Dict[str, Sequence[str]]] = None,
            kernel_path: Optional[str] = None, kernel_density_g_ml: float = 1.0):
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
        masks_per_time_point : list of dict, optional
            VOIs given directly instead of the study's RTSTRUCTs: per time point ``{name: (z, y, x) mask}``
            on that time point's SPECT grid (see LuDosimetryLib.pipeline.RunOptions).
        registration : {"none", "rigid", "deformable"}
            Registration of every time point to the reference (CT–CT, refined per VOI on SPECT). With the
            scene loaded, each registered time point's SPECT on the reference grid is added too
            (:attr:`registrationNodes`, the check view).
        vois : {"per-time-point", "reference-only"}
            Each time point's own VOIs, or the reference's propagated by the registration.
        tia_map : {"voi", "voxel"}
            TIA map from the VOI fits (organ TIA conserved) or from voxel-level fits.
        time_points : sequence of int, optional
            Reduced imaging: only these time points (1-based) give the TIA; the fit on all time points is
            reported beside it (``tia_full_bq_s``, ``reduced_relative_difference``).
        reduced_method : str
            TIA method for ``time_points`` (one of :data:`REDUCED_METHODS`).
        models_per_voi : dict, optional
            VOI name → models (keys of LuDosimetryLib.kinetics.MODELS) replacing the AICc choice for it.
        kernel_path : path-like, optional
            Dose voxel kernel file for the DVK dose (LuDosimetryLib.dose.read_dose_kernel formats: Interfile,
            voxel S-value table); its voxel size must be the SPECT's (1 %). Default: the built kernel.
        kernel_density_g_ml : float
            Density (g/mL) the kernel file was made for.

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
        self.registrationNodes = {}
        options = self.runOptions(dose_method, injected_activity_bq, injection_time, spect_series_uid,
                                  pvc, psf_fwhm_mm, density_correction, reference_time_point,
                                  masks_per_time_point, registration=registration, vois=vois, tia_map=tia_map,
                                  time_points=time_points, reduced_method=reduced_method,
                                  models_per_voi=models_per_voi, kernel_path=kernel_path,
                                  kernel_density_g_ml=kernel_density_g_ml)
        results = run_study(pathlib.Path(study_dir), options,
                            progress=lambda fraction, message: report(_RUN_STUDY_SHARE * fraction, message))
        report(_RUN_STUDY_SHARE, "Writing the results")
        write_outputs(results, pathlib.Path(out_dir), overwrite=overwrite)
        self.lastResults = results
        self.lastOutputDirectory = pathlib.Path(out_dir)

        if load_into_scene is None:
            load_into_scene = self.scene is not None
        if load_into_scene:
            report(0.95, "Adding the results to the scene")
            self.lastNodes = addResultsToScene(results, scene=self.scene)
            spectImages = {}
            if load_time_points and getattr(results, "inventory", None) is not None:
                items = self.loadTimePoints(results, parentItem=self.lastNodes.get("study_item"))
                spectImages = {item["index"]: item.get("spect_image") for item in items}
            if getattr(results, "registrations", None):
                report(0.97, "Registration check view")
                self.addRegistrationCheck(results, spectImages)
        report(1.0, "Done")
        return results

    def addRegistrationCheck(self, results, spectImages: Optional[Dict[int, Any]] = None) -> Dict[int, Any]:
        """Add each registered time point's SPECT carried to the reference grid (the check view).

        Parameters
        ----------
        results
            Results of a run with a registration.
        spectImages : dict, optional
            ``{time point: SimpleITK SPECT image}`` already read (e.g. by :meth:`loadTimePoints`); the
            others are read again from the study.

        Returns
        -------
        dict
            ``{time point (0-based): vtkMRMLScalarVolumeNode}``, also kept in :attr:`registrationNodes`.
        """
        from LuDosimetryLib import mrml

        self.registrationNodes = mrml.add_registered_spects(
            self.scene, results, spectImages, parent_item=self.lastNodes.get("study_item"),
            reference_volume=self.lastNodes.get("spect"))
        return self.registrationNodes

    def registeredSpectNodes(self) -> Dict[int, Any]:
        """The registration check view's volumes: those of the last run, else those found in the scene
        (e.g. after a .mrb was loaded). ``{time point (0-based): volume node}``."""
        if self.registrationNodes:
            return dict(self.registrationNodes)
        if self.scene is None:
            return {}
        from LuDosimetryLib import mrml

        return mrml.registered_spect_nodes(self.scene)

    def registrationCheckLayers(self, time_point: int) -> Tuple[Any, Any]:
        """``(background, foreground)`` of the registration check view for ``time_point`` (0-based): the
        reference SPECT and that time point's SPECT carried to the reference grid.

        Raises
        ------
        StudyError
            The time point has no registered SPECT (no registration run, or it is the reference).
        """
        from LuDosimetryLib import mrml
        from LuDosimetryLib.errors import StudyError

        nodes = self.registeredSpectNodes()
        foreground = nodes.get(int(time_point))
        if foreground is None:
            if not nodes:
                raise StudyError("no registered time point: run the dosimetry with a rigid or deformable "
                                 "registration first")
            reference = next(iter(nodes.values())).GetAttribute(mrml.REFERENCE_TIME_POINT_ATTRIBUTE)
            raise StudyError(f"time point {int(time_point) + 1} has no registered SPECT (registered: "
                             f"{', '.join(str(k + 1) for k in sorted(nodes))}; the reference is "
                             f"{int(reference) + 1 if reference not in (None, '') else '?'})")
        background = foreground.GetNodeReference(mrml.REFERENCE_VOLUME_ROLE)
        if background is None:
            background = self.lastNodes.get("spect")
        return background, foreground

    def voiNames(self, inventory, reference_time_point: int = 0) -> List[str]:
        """The ROI names of the study's RTSTRUCTs at the reference time point (all time points' when it has
        none), in file order; unreadable files are skipped. For the per-VOI model table."""
        import pydicom

        structureSets = list(inventory.by_role("rtstruct"))
        atReference = [s for s in structureSets if s.time_point == int(reference_time_point)]
        names: List[str] = []
        for entry in atReference or structureSets:
            for path in entry.files:
                try:
                    ds = pydicom.dcmread(path, specific_tags=["StructureSetROISequence"])
                except Exception:  # listed by the inventory, read properly by the run
                    continue
                for roi in ds.get("StructureSetROISequence", []):
                    # named as LuDosimetryLib.io.rtstruct names them (the VOI names of the run)
                    name = str(roi.get("ROIName", "") or f"ROI {roi.get('ROINumber', '')}")
                    if name not in names:
                        names.append(name)
        return names

    def loadTimePoints(self, results, parentItem: Optional[int] = None) -> List[Dict[str, Any]]:
        """Load each time point's SPECT, CT and VOIs (one segmentation per time point) of a run."""
        from LuDosimetryLib import mrml

        self.timePointItems = mrml.add_time_points(
            self.scene, results.inventory, injection_time=results.injection_time,
            spect_series_uids=[tp.spect_series_uid for tp in results.time_points], parent_item=parentItem)
        return self.timePointItems

    def segmentationNodesByTimePoint(self) -> List[Any]:
        """The VOI segmentation of each time point (None where a time point has none).

        From the time points this logic loaded; otherwise (e.g. after a scene was loaded from a .mrb) from
        the scene: the segmentations whose subject-hierarchy item carries the time-point attribute.
        """
        if self.timePointItems:
            return [item.get("segmentation") for item in self.timePointItems]
        if self.scene is None:
            return []
        from LuDosimetryLib import mrml

        found = mrml.nodes_by_time_point(self.scene, "vtkMRMLSegmentationNode")
        if not found:
            return []
        return [found.get(k) for k in range(max(found) + 1)]

    def setSegmentationForTimePoint(self, time_point: int, segmentation_node) -> None:
        """Use ``segmentation_node`` as the VOIs of time point ``time_point`` (0-based).

        Recorded in the scene too (the node's time-point attribute; other segmentations lose that time
        point), so that a saved scene remembers the choice.
        """
        from LuDosimetryLib import mrml
        from LuDosimetryLib.errors import StudyError

        current = self.segmentationNodesByTimePoint()
        limit = len(current) if current else 10
        if not 0 <= int(time_point) < limit:
            raise StudyError(f"time point {int(time_point) + 1} does not exist (the study has {len(current)})")
        mrml.set_time_point(segmentation_node, int(time_point), exclusive_class="vtkMRMLSegmentationNode")
        if self.timePointItems:
            self.timePointItems[int(time_point)]["segmentation"] = segmentation_node

    @staticmethod
    def sourceVolumeForSegmentation(segmentation_node):
        """The volume a segmentation is drawn on (its reference-geometry volume), or None."""
        return segmentation_node.GetNodeReference("referenceImageGeometryRef") if segmentation_node else None

    def chartNodes(self) -> Tuple[Any, Any]:
        """``(TAC chart, DVH chart)`` of the last run, else the last ones in the scene (None when none)."""
        tac, dvh = self.lastNodes.get("tac_chart"), self.lastNodes.get("dvh_chart")
        if self.scene is None or (tac is not None and dvh is not None):
            return tac, dvh
        for k in range(self.scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode")):
            chart = self.scene.GetNthNodeByClass(k, "vtkMRMLPlotChartNode")
            name = chart.GetName() or ""
            stem, _, suffix = name.rpartition("_")
            base = stem if suffix.isdigit() else name  # unique names get "_<n>"
            if base.endswith(" TAC") and self.lastNodes.get("tac_chart") is None:
                tac = chart
            elif base.endswith(" DVH") and self.lastNodes.get("dvh_chart") is None:
                dvh = chart
        return tac, dvh

    def editedVoiMasks(self, study_dir, segmentation_nodes: Sequence[Any], injected_activity_bq=None,
                       injection_time=None, spect_series_uid=None, progress=None) -> List[Dict[str, Any]]:
        """The segmentations as VOI masks on each time point's SPECT grid (``RunOptions.masks_per_time_point``).

        Parameters
        ----------
        segmentation_nodes : sequence of vtkMRMLSegmentationNode
            One per time point, in time-point order; all with the same segment names.

        Raises
        ------
        StudyError
            Not one segmentation per time point.
        """
        from LuDosimetryLib import mrml
        from LuDosimetryLib.errors import StudyError
        from LuDosimetryLib.io.images import read_spect
        from LuDosimetryLib.pipeline import choose_spect_series

        report = progress if progress is not None else (lambda fraction, message: None)
        inventory = self.inventory(study_dir, injected_activity_bq, injection_time)
        nodes = list(segmentation_nodes)
        if len(nodes) != len(inventory.time_points) or any(node is None for node in nodes):
            raise StudyError(f"{len(inventory.time_points)} time points need one segmentation each "
                             f"(got {sum(node is not None for node in nodes)})", study_dir)
        entries = choose_spect_series(inventory, self.runOptions(spect_series_uid=spect_series_uid))
        masks = []
        for k, (entry, node) in enumerate(zip(entries, nodes)):
            report(k / len(nodes), f"Reading the VOIs of time point {k + 1}")
            spect = read_spect(entry.files, injection_time=inventory.injection_time,
                               what=f"SPECT {entry.description or entry.series_instance_uid}")
            masks.append(mrml.masks_from_segmentation(node, spect.image))
        return masks

    def recomputeWithEditedVois(self, study_dir, segmentation_nodes: Sequence[Any], out_dir,
                                overwrite: bool = False, progress: Optional[Callable[[float, str], None]] = None,
                                load_into_scene: Optional[bool] = None, **options):
        """Rerun the dosimetry with the (edited) segmentations as VOIs.

        The segments become masks on each time point's SPECT grid and go to the pipeline directly
        (``RunOptions.masks_per_time_point``); the study's RTSTRUCTs are not used and no file is written
        besides the outputs (use :meth:`exportSegmentationAsRtstruct` for an RTSTRUCT of the edited VOIs).

        Parameters
        ----------
        segmentation_nodes : sequence of vtkMRMLSegmentationNode
            One per time point, in time-point order; all with the same segment names.
        options
            As for :meth:`run` (dose_method, injected_activity_bq, injection_time, pvc, psf_fwhm_mm, ...).

        Returns
        -------
        The results of the rerun.
        """
        from LuDosimetryLib.errors import OutputError
        from LuDosimetryLib.io.export import check_output_dir

        if out_dir is None or not str(out_dir).strip():
            raise OutputError("no output folder chosen")
        check_output_dir(pathlib.Path(out_dir), overwrite)
        report = progress if progress is not None else (lambda fraction, message: None)
        masks = self.editedVoiMasks(study_dir, segmentation_nodes, options.get("injected_activity_bq"),
                                    options.get("injection_time"), options.get("spect_series_uid"),
                                    progress=lambda fraction, message: report(0.1 * fraction, message))
        return self.run(study_dir, out_dir, overwrite=overwrite, load_into_scene=load_into_scene,
                        masks_per_time_point=masks,
                        progress=lambda fraction, message: report(0.1 + 0.9 * fraction, message), **options)

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

    # ------------------------------------------------------------------------------ DICOM database

    @staticmethod
    def dicomStudies(database) -> List[Dict[str, str]]:
        """The studies of a DICOM database (``slicer.dicomDatabase``), patient by patient.

        Returns
        -------
        list of dict
            ``{"patient_id", "patient_name", "study_instance_uid", "study_date", "description", "label"}``;
            ``label`` is the text of the panel's study list.
        """
        studies = []
        for patient in database.patients():
            name = str(database.nameForPatient(patient) or "").replace("^", " ").strip()
            patientId = str(database.fieldForPatient("PatientID", patient) or "")
            for study in database.studiesForPatient(patient):
                date = str(database.fieldForStudy("StudyDate", study) or "")
                description = str(database.fieldForStudy("StudyDescription", study) or "")
                label = " / ".join(part for part in (name or patientId, date, description) if part) or study
                studies.append({"patient_id": patientId, "patient_name": name, "study_instance_uid": str(study),
                                "study_date": date, "description": description, "label": label})
        return studies

    @staticmethod
    def studyFilesFromDatabase(study_instance_uid: str, database) -> List[str]:
        """Every file of a study in a DICOM database (all its series).

        Raises
        ------
        StudyError
            The study is not in the database or has no files.
        """
        from LuDosimetryLib.errors import StudyError

        files: List[str] = []
        for series in database.seriesForStudy(study_instance_uid):
            files.extend(str(f) for f in database.filesForSeries(series))
        if not files:
            raise StudyError(f"study {study_instance_uid} has no files in the DICOM database")
        return files

    def studyViewFromDatabase(self, study_instance_uid: str, database, view_dir=None) -> pathlib.Path:
        """A study folder for a study of the DICOM database: links to its files in ``view_dir`` (a new
        temporary folder by default); the database's files are not changed. Scanned once to check it."""
        files = self.studyFilesFromDatabase(study_instance_uid, database)
        folder = pathlib.Path(view_dir) if view_dir else pathlib.Path(tempfile.mkdtemp(prefix="ludosimetry-study-"))
        makeStudyView(files, folder)
        self.inventory(folder)
        return folder

    # ----------------------------------------------------------------------------- reconstruction

    def reconstruct(self, study_dir, recon_dir, algorithm: str = "osem", iterations: int = 4, subsets: int = 8,
                    scatter: str = "tew", psf: bool = True, overwrite: bool = False,
                    progress: Optional[Callable[[float, str], None]] = None) -> pathlib.Path:
        """Reconstruct the study's projections and return a study folder that uses the reconstructions.

        ``LuDosimetryLib.recon.reconstruct_study`` writes the reconstructions into ``recon_dir``; then
        ``recon_dir/study`` is made: links to every file of the study except its reconstructed SPECT
        series, and links to the new reconstructions. The dosimetry runs on that folder.

        Raises
        ------
        StudyError
            This version has no reconstruction, or the study cannot be reconstructed.
        OutputError
            ``recon_dir`` holds an earlier reconstruction and ``overwrite`` is False.
        """
        from LuDosimetryLib.errors import OutputError, StudyError

        unavailable = reconstructionUnavailableReason()
        if unavailable:
            raise StudyError(unavailable)
        reconstruct_study, ReconOptions = importReconstruction()
        report = progress if progress is not None else (lambda fraction, message: None)
        recon_dir = pathlib.Path(recon_dir)
        view = recon_dir / "study"
        if view.exists():
            if not overwrite:
                raise OutputError("holds an earlier reconstruction; allow overwriting to replace it", recon_dir)
            shutil.rmtree(str(view))
        inventory = self.inventory(study_dir)
        options = ReconOptions(algorithm=algorithm, iterations=int(iterations), subsets=int(subsets),
                               scatter=scatter, psf=bool(psf))
        written = reconstruct_study(pathlib.Path(study_dir), recon_dir, options,
                                    progress=lambda fraction, message: report(0.95 * fraction, message),
                                    overwrite=overwrite)
        report(0.95, "Linking the reconstructions into a study folder")
        kept = [f for series in inventory.series if series.role != "spect_recon" for f in series.files]
        makeStudyView(kept + [str(f) for f in written], view)
        report(1.0, "Reconstructed")
        return view

    # -------------------------------------------------------------------------------------- exports

    @staticmethod
    def _runFile(out_dir, name: str) -> pathlib.Path:
        from LuDosimetryLib.errors import OutputError

        if out_dir is None or not str(out_dir).strip():
            raise OutputError(f"no output folder with a {name}; run the dosimetry first")
        path = pathlib.Path(out_dir) / name
        if not path.is_file():
            raise OutputError(f"has no {name}; run the dosimetry first", pathlib.Path(out_dir))
        return path

    def exportRtDose(self, out_dir, path, overwrite: bool = False) -> pathlib.Path:
        """Copy the run's RT Dose (``rtdose.dcm`` of ``out_dir``) to ``path`` (atomic; an existing file
        only with ``overwrite``)."""
        return writeFileAtomically(path, self._runFile(out_dir, RTDOSE_FILE).read_bytes(), overwrite)

    def exportReport(self, out_dir, path, overwrite: bool = False) -> pathlib.Path:
        """Copy the run's ``results.json`` to ``path`` (atomic; an existing file only with ``overwrite``)."""
        return writeFileAtomically(path, self._runFile(out_dir, RESULTS_FILE).read_bytes(), overwrite)

    def exportCsv(self, out_dir, folder, overwrite: bool = False) -> List[pathlib.Path]:
        """Write ``dvh.csv`` (the run's) and ``voi_results.csv`` (a row per VOI of results.json) into
        ``folder``; nothing is written when either exists and ``overwrite`` is False."""
        import json

        from LuDosimetryLib.errors import OutputError

        folder = pathlib.Path(folder)
        targets = [folder / DVH_FILE, folder / VOI_RESULTS_FILE]
        existing = [t for t in targets if t.exists()]
        if existing and not overwrite:
            raise OutputError("exists; not overwritten", existing[0])
        dvh = self._runFile(out_dir, DVH_FILE).read_bytes()
        saved = json.loads(self._runFile(out_dir, RESULTS_FILE).read_text(encoding="utf-8"))
        return [writeFileAtomically(targets[0], dvh, overwrite),
                writeFileAtomically(targets[1], resultsCsvText(saved).encode("utf-8"), overwrite)]


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
