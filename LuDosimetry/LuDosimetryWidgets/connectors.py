"""Parameter-node connectors for the LuDosimetry panel's widgets that Slicer has none for.

Importing this module registers them (``@parameterNodeGuiConnector``); the module file imports it before it
builds its parameter node. Qt only, no dosimetry: the per-VOI model table's text is read and written by
:mod:`LuDosimetryLib.options`.
"""
from typing import Any, List

import ctk
import qt
from slicer.parameterNodeWrapper import GuiConnector, parameterNodeGuiConnector, unannotatedType

from LuDosimetryLib import options

#: Object name of the per-VOI model table in the .ui (its parameter connector is tied to this widget).
VOI_MODELS_TABLE = "voiModelsTableWidget"


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
    its name and a combo box of the model choices) to a ``str`` parameter holding the table as text
    (:func:`LuDosimetryLib.options.parse_voi_model_table`). The parameter decides the rows: writing a value
    with other VOI names rebuilds the table."""

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
        # A connector made again for a table that already has rows (leaving and entering the module) takes
        # over their combo boxes: otherwise the table would show one model while the parameter holds another.
        self._combos: List[Any] = [widget.cellWidget(row, 1) for row in range(widget.rowCount)
                                   if widget.cellWidget(row, 1) is not None]
        if len(self._combos) != widget.rowCount:
            self._combos = []
            widget.setRowCount(0)
        self._connected = False
        self._widget.setColumnCount(2)
        self._widget.setHorizontalHeaderLabels(["VOI", "Model"])

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
        return options.format_voi_model_table({name: combo.currentText
                                               for name, combo in zip(self._names(), self._combos)})

    def write(self, value: str) -> None:
        try:
            models = options.parse_voi_model_table(value)
        except ValueError:  # a hand-edited scene: show no rows rather than fail
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
                for choice, _ in options.MODEL_CHOICES:
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
