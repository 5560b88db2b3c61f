"""Static checks of the 3D Slicer extension (nothing here imports LuDosimetry.py, which needs Slicer).

- the .ui form: a Qt Designer form that Qt's own loader accepts (PyQt5, when installed); the widget names
  the module looks up exist; each ``SlicerParameterName`` is a panel parameter of
  :func:`LuDosimetryLib.options.panel_parameters` or a key of ``PANEL_STATE`` in LuDosimetry.py, each of
  those has exactly one widget, the widget can show the parameter (combo box items, spin box ranges);
- the Python sources: Python 3.9 syntax; no Qt/CTK/Slicer/VTK in the library outside ``LuDosimetryLib/mrml``;
  the module imports at its top level only what a scripted module imports plus the standard-library-only
  ``LuDosimetryLib.options``/``LuDosimetryLib.dependencies``; LuDosimetry.py holds no library logic;
- the extension: CMake files, the module's install layout (CMake under a stand-in for Slicer's build
  macros), icons, and the package list of the first-run installer.
"""
from __future__ import annotations

import ast
import re
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from LuDosimetryLib import dependencies, options

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "LuDosimetry"
MODULE_PY = MODULE_DIR / "LuDosimetry.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "LuDosimetry.ui"
LIB_DIR = ROOT / "LuDosimetryLib"
TEST_DIR = ROOT / "Testing" / "Python"

#: What a scripted module imports at its top level (besides the standard library).
SCRIPTED_MODULE_IMPORTS = {"slicer", "vtk", "qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.util",
                           "slicer.parameterNodeWrapper"}
#: The parts of LuDosimetryLib the module may import at its top level (standard library only inside).
MODULE_LIBRARY_IMPORTS = {"LuDosimetryLib.options", "LuDosimetryLib.dependencies"}
#: The library files those bring in when imported; they may import the standard library and errors only.
STANDARD_LIBRARY_ONLY = ("__init__.py", "options.py", "dependencies.py", "errors.py")
#: Toolkits of the Slicer application: only LuDosimetryLib/mrml may import them.
GUI_MODULES = {"qt", "ctk", "slicer", "vtk", "vtkmodules", "sitkUtils", "PythonQt", "MRMLCorePython", "__main__"}
#: Upper bound of LuDosimetry.py: a GUI shell, the work is in the library.
MODULE_MAX_LINES = 1000

#: Qt's defaults of the range of a spin box that the .ui does not set.
QT_DEFAULT_RANGE = {"QSpinBox": (0, 99), "QDoubleSpinBox": (0.0, 99.99)}
QT_DEFAULT_DECIMALS = 2


# ------------------------------------------------------------------------------------------- helpers

def _module_source() -> str:
    return MODULE_PY.read_text(encoding="utf-8")


def _module_tree() -> ast.Module:
    return ast.parse(_module_source(), filename=str(MODULE_PY))


def _gui_files() -> list:
    """The module's Python files: LuDosimetry.py and its own GUI package(s) beside it (e.g. LuDosimetryWidgets/,
    installed beside LuDosimetry.py, where Slicer's sys.path finds them); not the headless Scripts/."""
    others = sorted(p for p in MODULE_DIR.rglob("*.py")
                    if p != MODULE_PY and p.relative_to(MODULE_DIR).parts[0] != "Scripts")
    return [MODULE_PY] + others


def _gui_packages() -> set:
    """Names of the module's own packages (folders beside LuDosimetry.py with an __init__.py)."""
    return {p.parent.name for p in MODULE_DIR.glob("*/__init__.py") if p.parent.name != "Scripts"}


def _gui_constant(name: str):
    """The literal value of a top-level constant in one of the module's files."""
    found = []
    for path in _gui_files():
        try:
            found.append(_top_level_value(name, ast.parse(path.read_text(encoding="utf-8"))))
        except AssertionError:
            continue
    assert len(found) == 1, f"{name} is assigned in {len(found)} of the module's files"
    return ast.literal_eval(found[0])


def _ui_root() -> ET.Element:
    return ET.parse(UI_FILE).getroot()


def _ui_widgets() -> list:
    return list(_ui_root().iter("widget"))


def _property(widget: ET.Element, name: str):
    """A property of a widget in the .ui as a Python value (string, number, bool, string list); None when unset."""
    for prop in widget.findall("property"):
        if prop.get("name") != name:
            continue
        value = prop[0]
        if value.tag == "string":
            return value.text or ""
        if value.tag == "number":
            return int(value.text)
        if value.tag == "double":
            return float(value.text)
        if value.tag == "bool":
            return value.text == "true"
        if value.tag == "stringlist":
            return [s.text for s in value.findall("string")]
        return ET.tostring(value, encoding="unicode")
    return None


def _combo_items(widget: ET.Element) -> list:
    """Texts of the <item>s a combo box lists in the .ui."""
    return [item.findtext("property/string") for item in widget.findall("item")]


def _parameter_widgets() -> dict:
    """``{SlicerParameterName: [widgets]}`` of the .ui."""
    found: dict = {}
    for widget in _ui_widgets():
        name = _property(widget, "SlicerParameterName")
        if name is not None:
            found.setdefault(name, []).append(widget)
    return found


def _top_level_value(name: str, tree: ast.Module = None) -> ast.AST:
    """The value assigned to a top-level name of LuDosimetry.py (or of ``tree``)."""
    for node in (tree or _module_tree()).body:
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AnnAssign) else [])
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return node.value
    raise AssertionError(f"assigns no {name}")


def _panel_state() -> dict:
    """``{key: annotation AST}`` of the ``PANEL_STATE`` dict of LuDosimetry.py (values are (annotation, default))."""
    value = _top_level_value("PANEL_STATE")
    assert isinstance(value, ast.Dict), "PANEL_STATE is a dict literal"
    state = {}
    for key, item in zip(value.keys, value.values):
        assert isinstance(key, ast.Constant) and isinstance(key.value, str), "PANEL_STATE keys are strings"
        assert isinstance(item, ast.Tuple) and len(item.elts) == 2, \
            f"PANEL_STATE[{key.value!r}] is (annotation, default)"
        state[key.value] = item.elts[0]
    return state


def _split_annotation(annotation: ast.AST):
    """(base type text, {extra name: [literal arguments]}) of an ``Annotated[base, Extra(...)]`` annotation."""
    extras = {}
    if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value).split(".")[-1] == "Annotated":
        elements = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
        annotation = elements[0]
        for extra in elements[1:]:
            if isinstance(extra, ast.Call):
                extras[ast.unparse(extra.func).split(".")[-1]] = [ast.literal_eval(a) for a in extra.args]
    return ast.unparse(annotation), extras


def _spin_box_range(widget: ET.Element):
    cls = widget.get("class")
    low, high = QT_DEFAULT_RANGE[cls]
    minimum, maximum = _property(widget, "minimum"), _property(widget, "maximum")
    return (low if minimum is None else minimum), (high if maximum is None else maximum)


# ------------------------------------------------------------------------------------------ the form

def test_ui_is_a_qt_designer_form():
    root = _ui_root()
    assert root.tag == "ui" and root.get("version") == "4.0"
    top = root.find("widget")
    assert top is not None and top.get("class") == "qMRMLWidget"
    assert root.findtext("class") == top.get("name") == "LuDosimetry"

    names = [w.get("name") for w in _ui_widgets()]
    assert all(names), "every widget has a name"
    assert len(names) == len(set(names)), f"duplicate widget names: {sorted(n for n in names if names.count(n) > 1)}"

    declared = {}
    for custom in root.iter("customwidget"):
        cls, extends, header = custom.findtext("class"), custom.findtext("extends"), custom.findtext("header")
        assert cls and extends and header, f"incomplete <customwidget> {cls}"
        declared[cls] = header
    for widget in _ui_widgets():
        cls = widget.get("class")
        if not cls.startswith("Q"):
            assert cls in declared, f"{widget.get('name')}: class {cls} is not declared in <customwidgets>"

    for layout in root.iter("layout"):
        for item in layout.findall("item"):
            assert len(list(item)) == 1, "a layout <item> holds exactly one widget, layout or spacer"


# Stand-ins for the CTK/MRML *widget classes* of the form (plain PyQt5 widgets), so that PyQt5's uic can
# load it: uic imports a custom widget from the module named by its header. Nothing of Slicer is faked.
_QT_CUSTOM_WIDGETS = {
    "ctkCollapsibleButton": "from PyQt5.QtWidgets import QGroupBox\n"
                            "class ctkCollapsibleButton(QGroupBox):\n"
                            "    def setText(self, text):\n        self.setTitle(text)\n"
                            "    def setCollapsed(self, value):\n        self.collapsed = value\n",
    "ctkPathLineEdit": "from PyQt5.QtWidgets import QLineEdit\n"
                       "class ctkPathLineEdit(QLineEdit):\n"
                       "    Dirs, Files, Drives, NoDot, NoDotDot, Readable = 1, 2, 4, 8, 16, 32\n"
                       "    def setFilters(self, value):\n        self.filters = value\n"
                       "    def setNameFilters(self, value):\n        self.nameFilters = value\n"
                       "    def setSettingKey(self, value):\n        self.settingKey = value\n",
    # mrmlSceneChanged(vtkMRMLScene*) records the slots the form connects to it.
    "qMRMLWidget": "from PyQt5.QtWidgets import QWidget\n"
                   "class _Signal:\n"
                   "    def __init__(self):\n        self.slots = []\n"
                   "    def __getitem__(self, signature):\n        assert signature == 'vtkMRMLScene*'\n"
                   "        return self\n"
                   "    def connect(self, slot):\n        self.slots.append(slot)\n"
                   "class qMRMLWidget(QWidget):\n"
                   "    def __init__(self, *args, **kwargs):\n"
                   "        super().__init__(*args, **kwargs)\n        self.mrmlSceneChanged = _Signal()\n",
    "qMRMLNodeComboBox": "from PyQt5.QtWidgets import QComboBox\n"
                         "class qMRMLNodeComboBox(QComboBox):\n"
                         "    def setMRMLScene(self, scene):\n        self.scene = scene\n"
                         "    def setNodeTypes(self, value):\n        self.nodeTypes = value\n"
                         "    def setNoneEnabled(self, value):\n        self.noneEnabled = value\n"
                         "    def setAddEnabled(self, value):\n        self.addEnabled = value\n"
                         "    def setRemoveEnabled(self, value):\n        self.removeEnabled = value\n",
    "qMRMLPlotWidget": "from PyQt5.QtWidgets import QWidget\nclass qMRMLPlotWidget(QWidget):\n"
                       "    def setMRMLScene(self, scene):\n        self.scene = scene\n",
}


def test_ui_loads_in_qt(tmp_path, monkeypatch):
    """Qt's own form loader accepts every property of the Qt widgets; the loaded widgets have the declared
    ranges and the "not set" texts (optional: needs PyQt5)."""
    pytest.importorskip("PyQt5.QtWidgets")
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    from PyQt5 import uic
    from PyQt5.QtWidgets import (QApplication, QComboBox, QDateTimeEdit, QDoubleSpinBox, QLineEdit, QPushButton,
                                 QSpinBox, QTableWidget, QWidget)

    for name, code in _QT_CUSTOM_WIDGETS.items():
        (tmp_path / f"{name}.py").write_text(code)
        monkeypatch.delitem(sys.modules, name, raising=False)  # a module of that name from elsewhere
    monkeypatch.syspath_prepend(str(tmp_path))
    app = QApplication.instance() or QApplication([])  # kept alive while the form loads
    try:
        form = uic.loadUi(str(UI_FILE))
    finally:  # the widget modules uic imported from tmp_path do not outlive the test
        for name in _QT_CUSTOM_WIDGETS:
            sys.modules.pop(name, None)

    # Every panel parameter's widget, as Qt built it: its parameter name and, for spin boxes, the range.
    for parameter in options.panel_parameters():
        found = [w for w in form.findChildren(QWidget) if w.property("SlicerParameterName") == parameter.name]
        assert len(found) == 1, parameter.name
        widget = found[0]
        if isinstance(widget, (QSpinBox, QDoubleSpinBox)):
            assert (widget.minimum(), widget.maximum()) == pytest.approx(parameter.range), parameter.name
        if isinstance(widget, QComboBox) and widget.count():
            assert [widget.itemText(k) for k in range(widget.count())] == list(parameter.choices)

    spin = form.findChild(QDoubleSpinBox, "injectedActivitySpinBox")
    assert spin.specialValueText() == "from DICOM headers" and spin.value() == spin.minimum() == 0.0
    when = form.findChild(QDateTimeEdit, "injectionTimeEdit")
    assert when.specialValueText() == "from DICOM headers"
    reference = form.findChild(QSpinBox, "referenceTimePointSpinBox")
    assert (reference.minimum(), reference.maximum(), reference.value()) == (1, 10, 1)  # 1 = first time point
    reduced = form.findChild(QLineEdit, "reducedTimePointsLineEdit")
    assert reduced.placeholderText() == "all (e.g. 2,3)"
    for name in ("resultsTableWidget", "inventoryTableWidget", "fitsTableWidget", "voiModelsTableWidget",
                 "cyclesTableWidget"):
        assert form.findChild(QTableWidget, name).editTriggers() == QTableWidget.NoEditTriggers, name
    residual = form.findChild(QDoubleSpinBox, "residualActivitySpinBox")
    assert residual.specialValueText() == "none" and residual.value() == residual.minimum() == 0.0
    dew_k = form.findChild(QDoubleSpinBox, "reconDewKSpinBox")  # 0 = not given: DEW then refuses, naming it
    assert dew_k.specialValueText().startswith("not given") and dew_k.value() == dew_k.minimum() == 0.0
    assert form.findChild(QDoubleSpinBox, "reconDeadTimeFactorSpinBox").value() == 1.0
    next_activity = form.findChild(QDoubleSpinBox, "cyclesNextActivitySpinBox")
    assert next_activity.specialValueText() == "mean of the cycles" and next_activity.value() == 0.0
    assert next_activity.suffix() == " MBq"
    kernel_density = form.findChild(QDoubleSpinBox, "kernelDensitySpinBox")
    assert kernel_density.value() == 1.0 and kernel_density.suffix() == " g/mL"
    assert not form.findChild(QPushButton, "showRegistrationCheckButton").isEnabled()
    # The MRML widgets get the scene from the form.
    receivers = {slot.__self__.objectName() for slot in form.mrmlSceneChanged.slots}
    assert receivers == {"voiSegmentationSelector", "tacPlotWidget", "dvhPlotWidget"}
    app.processEvents()


def _ui_names_used_by_the_module() -> set:
    """``self.ui.<name>`` and ``getattr(self.ui, "<name>")`` in LuDosimetry.py, also where the name comes
    from a ``for name, ... in ((literal, ...), ...)`` loop."""
    def is_self_ui(node):
        return (isinstance(node, ast.Attribute) and node.attr == "ui" and isinstance(node.value, ast.Name)
                and node.value.id == "self")

    trees = [ast.parse(path.read_text(encoding="utf-8")) for path in _gui_files()]
    tree = ast.Module(body=[statement for t in trees for statement in t.body], type_ignores=[])
    used = set()
    loop_values = {}  # loop variable -> the literal strings it takes
    for node in ast.walk(tree):
        if (isinstance(node, ast.For) and isinstance(node.target, ast.Tuple)
                and isinstance(node.iter, (ast.Tuple, ast.List))):
            for position, target in enumerate(node.target.elts):
                if isinstance(target, ast.Name):
                    values = [row.elts[position].value for row in node.iter.elts
                              if isinstance(row, ast.Tuple) and isinstance(row.elts[position], ast.Constant)]
                    loop_values.setdefault(target.id, set()).update(values)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_self_ui(node.value):
            used.add(node.attr)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
              and len(node.args) >= 2 and is_self_ui(node.args[0])):
            name = node.args[1]
            if isinstance(name, ast.Constant):
                used.add(name.value)
            else:
                assert isinstance(name, ast.Name) and name.id in loop_values, \
                    f"line {node.lineno}: getattr(self.ui, ...) with a name this test cannot read"
                used.update(loop_values[name.id])
    return used


def test_widget_names_used_by_the_module_exist_in_the_ui():
    ui = {w.get("name"): w.get("class") for w in _ui_widgets()}
    used = _ui_names_used_by_the_module()
    assert {"runButton", "cancelButton", "exportCsvButton", "referenceTimePointSpinBox"} <= used  # lookups are seen
    assert used <= set(ui), f"not in the .ui: {sorted(used - set(ui))}"
    # The per-VOI model table's connector is tied to the widget of this name.
    table = _gui_constant("VOI_MODELS_TABLE")
    assert ui.get(table) == "QTableWidget"


def test_every_parameter_has_exactly_one_widget():
    panel = [p.name for p in options.panel_parameters()]
    state = list(_panel_state())
    assert len(panel) == len(set(panel)), "a parameter name is declared twice in LuDosimetryLib.options"
    assert not set(panel) & set(state), f"PANEL_STATE repeats option parameters: {sorted(set(panel) & set(state))}"
    widgets = _parameter_widgets()
    unknown = sorted(set(widgets) - set(panel) - set(state))
    assert not unknown, f"SlicerParameterName that is neither an option's parameter nor in PANEL_STATE: {unknown}"
    for name in panel + state:
        assert len(widgets.get(name, [])) == 1, \
            f"{name}: {len(widgets.get(name, []))} widgets ({[w.get('name') for w in widgets.get(name, [])]})"
        prop = [p for p in widgets[name][0].findall("property") if p.get("name") == "SlicerParameterName"][0]
        assert prop.get("stdset") == "0", f"{name}: SlicerParameterName must be a dynamic property (stdset=\"0\")"


def test_the_parameter_node_is_built_from_the_declarations():
    """The parameter-node builder takes the option parameters from options.panel_parameters() and adds
    PANEL_STATE; its annotation gives combo boxes their choices and spin boxes their range."""
    functions = {n.name: n for n in _module_tree().body if isinstance(n, ast.FunctionDef)}
    wrapper = _top_level_value("LuDosimetryParameterNode")
    assert isinstance(wrapper, ast.Call) and ast.unparse(wrapper.func) == "parameterNodeWrapper"
    builders = _reachable_functions(wrapper, functions)
    text = "\n".join(ast.unparse(functions[name]) for name in builders)
    assert "options.panel_parameters()" in text and "PANEL_STATE" in text
    assert re.search(r"Choice\(", text) and re.search(r"WithinRange\(\*?\w+\.range\)", text)


def _widget_classes_for(parameter) -> set:
    """The widget classes that show an option's panel parameter (the module's own connectors included)."""
    kind = parameter.option.kind
    if parameter.choices:
        return {"QComboBox"}
    return {"int": {"QSpinBox"}, "float": {"QDoubleSpinBox"}, "bool": {"QCheckBox"},
            "path": {"ctkPathLineEdit"}, "datetime": {"QDateTimeEdit"}, "voi_models": {"QTableWidget"},
            "time_points": {"QLineEdit"}, "text": {"QLineEdit"}, "percentages": {"QLineEdit"},
            "repeated_text": {"QLineEdit"}}[kind]  # repeated text: items separated by commas


def test_each_option_widget_can_show_its_parameter():
    widgets = {name: found[0] for name, found in _parameter_widgets().items()}
    table = _gui_constant("VOI_MODELS_TABLE")
    by_type = {str: {"QComboBox", "QLineEdit", "ctkPathLineEdit", "QDateTimeEdit", "QTableWidget"},
               int: {"QSpinBox"}, float: {"QDoubleSpinBox"}, bool: {"QCheckBox"}}
    for parameter in options.panel_parameters():
        widget = widgets[parameter.name]
        cls = widget.get("class")
        assert cls in _widget_classes_for(parameter), f"{parameter.name} ({parameter.option.kind}) shown by a {cls}"
        assert cls in by_type[parameter.type], f"{parameter.name}: a {cls} cannot hold a {parameter.type.__name__}"
        if cls == "QComboBox":
            # Slicer's combo-box connector takes its items from the Choice annotation (the declared choices);
            # items written in the .ui must be the same, in the same order.
            assert parameter.choices, f"{parameter.name}: a combo box needs the declared choices"
            items = _combo_items(widget)
            assert not items or items == list(parameter.choices), f"{parameter.name}: .ui items {items}"
        if cls == "QTableWidget":
            assert widget.get("name") == table, f"{widget.get('name')}: the table connector handles {table} only"
        if cls in QT_DEFAULT_RANGE:
            assert parameter.range is not None, f"{parameter.name}: a spin box needs a declared range"
            assert parameter.range[0] <= parameter.default <= parameter.range[1], parameter.name


def test_spin_box_ranges_equal_the_declared_panel_ranges():
    widgets = {name: found[0] for name, found in _parameter_widgets().items()}
    checked = []
    for parameter in options.panel_parameters():
        widget = widgets[parameter.name]
        if widget.get("class") not in QT_DEFAULT_RANGE:
            continue
        assert _spin_box_range(widget) == pytest.approx(parameter.range), \
            f"{parameter.name}: .ui range {_spin_box_range(widget)}, declared {parameter.range}"
        if widget.get("class") == "QDoubleSpinBox":
            decimals = _property(widget, "decimals")
            decimals = QT_DEFAULT_DECIMALS if decimals is None else decimals
            for end in parameter.range:  # the spin box can show the ends of the range
                assert round(end, decimals) == pytest.approx(end), f"{parameter.name}: {end} with {decimals} decimals"
        checked.append(parameter.name)
    assert {"referenceTimePoint", "injectedActivityMBq", "reconIterations"} <= set(checked)


def test_panel_state_widgets_can_show_their_annotation():
    widgets = {name: found[0] for name, found in _parameter_widgets().items()}
    for name, annotation in _panel_state().items():
        widget = widgets[name]
        cls = widget.get("class")
        base, extras = _split_annotation(annotation)
        if base == "str":
            assert cls in {"QLineEdit", "ctkPathLineEdit"}, f"{name}: str shown by a {cls}"
        elif base == "int":
            assert cls == "QSpinBox", f"{name}: int shown by a {cls}"
            assert "WithinRange" in extras, f"{name}: a spin box parameter needs a WithinRange"
            assert _spin_box_range(widget) == tuple(extras["WithinRange"]), name
        elif base.endswith("vtkMRMLSegmentationNode"):
            assert cls == "qMRMLNodeComboBox" and _property(widget, "nodeTypes") == ["vtkMRMLSegmentationNode"], name
        else:
            raise AssertionError(f"{name}: no check for a {base} parameter")


# --------------------------------------------------------------------------------------- Python sources

def _python_files():
    return sorted(MODULE_DIR.rglob("*.py")) + sorted(LIB_DIR.rglob("*.py")) + sorted(TEST_DIR.rglob("*.py"))


def test_python_sources_parse_as_python_3_9():
    files = _python_files()
    assert {MODULE_PY, MODULE_DIR / "Scripts" / "run_study.py", LIB_DIR / "options.py", Path(__file__)} <= set(files)
    for path in files:
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))


def _imports(tree: ast.AST):
    """(node, module name) of every import; ``from x import a`` gives x.a when a could be a module, too."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name
        elif isinstance(node, ast.ImportFrom):
            yield node, ("." * node.level) + (node.module or "")


def _absolute(name: str, package: str) -> str:
    """The absolute module name of an import (``..x`` style or absolute) written in a module of ``package``."""
    level = len(name) - len(name.lstrip("."))
    if not level:
        return name
    parts = package.split(".")
    parts = parts[: len(parts) - (level - 1)]
    rest = name[level:]
    return ".".join(parts + ([rest] if rest else []))


def _stdlib_names() -> set:
    names = getattr(sys, "stdlib_module_names", None)
    if names is None:  # Python 3.9: those the checked files may use
        names = {"__future__", "argparse", "ast", "collections", "csv", "dataclasses", "datetime", "functools",
                 "importlib", "io", "json", "logging", "math", "os", "pathlib", "re", "shutil", "sys", "tempfile",
                 "traceback", "typing", "unittest"}
    return set(names) | {"__future__"}


def test_library_imports_no_gui_toolkit_outside_mrml():
    offenders = []
    for path in sorted(LIB_DIR.rglob("*.py")):
        if path.relative_to(LIB_DIR).parts[0] == "mrml":
            continue
        for node, name in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if not name.startswith(".") and name.split(".")[0] in GUI_MODULES:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: import {name}")
    assert not offenders, "\n".join(offenders)


def test_module_top_level_imports_are_a_scripted_module_s_and_the_standard_library_parts_of_the_library():
    """LuDosimetry.py and its own GUI package import, at their top level, the standard library, what every
    scripted module imports, LuDosimetryLib.options/dependencies (standard library only) and each other."""
    stdlib = _stdlib_names()
    own = _gui_packages()
    library = set()
    for path in _gui_files():
        package = ".".join(path.relative_to(MODULE_DIR).parts[:-1])
        where = path.relative_to(ROOT)
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for _, name in _imports(node):
                if name.startswith("."):
                    name = _absolute(name, package)
                if name.split(".")[0] == "LuDosimetryLib":
                    if isinstance(node, ast.ImportFrom) and name == "LuDosimetryLib":  # from LuDosimetryLib import x
                        modules = {f"{name}.{a.name}" for a in node.names}
                    else:  # import LuDosimetryLib.x, from LuDosimetryLib.x import y
                        modules = {name}
                    assert modules <= MODULE_LIBRARY_IMPORTS, f"{where}:{node.lineno}: top-level import of {modules}"
                    library |= modules
                else:
                    assert (name.split(".")[0] in stdlib | own or name in SCRIPTED_MODULE_IMPORTS), \
                        f"{where}:{node.lineno}: top-level import {name}"
    assert "LuDosimetryLib.options" in library  # the parameter node is built from the declarations


def test_options_and_dependencies_import_only_the_standard_library_and_errors():
    stdlib = _stdlib_names()
    for file_name in STANDARD_LIBRARY_ONLY:
        path = LIB_DIR / file_name
        for node, name in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            module = _absolute(name, "LuDosimetryLib")
            if module == "LuDosimetryLib" and isinstance(node, ast.ImportFrom):  # from . import x
                module = {f"LuDosimetryLib.{a.name}" for a in node.names} - {"LuDosimetryLib.__version__"}
                assert module <= {"LuDosimetryLib.errors"}, f"{file_name}:{node.lineno}: imports {sorted(module)}"
                continue
            assert module.split(".")[0] in stdlib or module == "LuDosimetryLib.errors", \
                f"{file_name}:{node.lineno}: imports {module}"


def test_importing_options_and_dependencies_loads_no_third_party_package():
    """What the module imports before the library's dependencies exist, checked in a fresh interpreter."""
    third_party = sorted({module_name for module_name, _ in dependencies.REQUIRED_PACKAGES}
                         | {"slicer", "vtk", "qt", "ctk", "torch", "pytomography"})
    code = ("import sys; import LuDosimetryLib.options, LuDosimetryLib.dependencies, LuDosimetryLib.errors; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {third_party!r}))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT), timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def _reachable_functions(start: ast.AST, functions: dict) -> set:
    """Names of the top-level functions that ``start`` calls or refers to, directly or through each other."""
    found, todo = set(), [start]
    while todo:
        for node in ast.walk(todo.pop()):
            if isinstance(node, ast.Name) and node.id in functions and node.id not in found:
                found.add(node.id)
                todo.append(functions[node.id])
    return found


def _is_connector(node: ast.ClassDef) -> bool:
    return ([ast.unparse(b) for b in node.bases] == ["GuiConnector"]
            and [ast.unparse(d) for d in node.decorator_list] == ["parameterNodeGuiConnector"])


def test_module_defines_only_the_gui():
    """LuDosimetry.py: the four scripted-module classes, parameter connectors and the parameter-node builder;
    its GUI package: parameter connectors. Nothing else (the dosimetry, tables and file handling are
    LuDosimetryLib's); LuDosimetry.py in at most MODULE_MAX_LINES lines."""
    tree = _module_tree()
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    bases = {name: [ast.unparse(b) for b in node.bases] for name, node in classes.items()}
    assert bases.pop("LuDosimetry") == ["ScriptedLoadableModule"]
    assert bases.pop("LuDosimetryWidget") == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert bases.pop("LuDosimetryLogic") == ["ScriptedLoadableModuleLogic"]
    assert bases.pop("LuDosimetryTest") == ["ScriptedLoadableModuleTest"]
    connectors = []
    for name in bases:  # the rest: parameter connectors only
        assert _is_connector(classes[name]), \
            f"class {name} is neither a scripted-module class nor a parameter connector"
        connectors.append(classes[name])
    functions = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    builders = _reachable_functions(_top_level_value("LuDosimetryParameterNode"), functions)
    others = sorted(set(functions) - builders)
    assert not others, f"LuDosimetry.py: top-level functions that do not build the parameter node: {others}"

    for path in _gui_files()[1:]:
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)), f"{where}: function {node.name}"
            if isinstance(node, ast.ClassDef):
                assert _is_connector(node), f"{where}: class {node.name} is not a parameter connector"
                connectors.append(node)
    # Slicer's own connectors do not tie a str to these widgets: the module's connectors must.
    can_represent = " ".join(ast.unparse(method) for node in connectors for method in node.body
                             if isinstance(method, ast.FunctionDef) and method.name == "canRepresent")
    used = {widgets[0].get("class") for widgets in _parameter_widgets().values()}
    for cls in sorted(used & {"ctkPathLineEdit", "QDateTimeEdit", "QTableWidget"}):
        assert re.search(rf"\b(qt|ctk)\.{cls}\b", can_represent), f"no parameter connector for a {cls}"

    lines = len(_module_source().splitlines())
    assert lines <= MODULE_MAX_LINES, f"LuDosimetry.py has {lines} lines (at most {MODULE_MAX_LINES})"


def test_logic_delegates_to_the_dosimetry_session():
    """LuDosimetryLogic holds a DosimetrySession; its methods stay short (the session does the work)."""
    logic = [n for n in _module_tree().body if isinstance(n, ast.ClassDef) and n.name == "LuDosimetryLogic"][0]
    text = ast.unparse(logic)
    assert "DosimetrySession(" in text and "self.session" in text
    for method in logic.body:
        if isinstance(method, ast.FunctionDef):
            body = [s for s in method.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
            assert len(body) <= 5, f"LuDosimetryLogic.{method.name} has {len(body)} statements"


# ------------------------------------------------------------------------------------ CMake and resources

def _cmake_text(path: Path) -> str:
    """CMake source without comments."""
    return "\n".join(line.split("#", 1)[0] for line in path.read_text(encoding="utf-8").splitlines())


def test_top_level_cmakelists_is_a_slicer_extension():
    text = _cmake_text(ROOT / "CMakeLists.txt")
    for pattern in (r"cmake_minimum_required\(", r"project\(LuDosimetry\)",
                    r"set\(EXTENSION_HOMEPAGE ", r'set\(EXTENSION_CATEGORY "Nuclear Medicine"\)',
                    r"set\(EXTENSION_CONTRIBUTORS ", r"set\(EXTENSION_DESCRIPTION ", r"set\(EXTENSION_ICONURL ",
                    r"set\(EXTENSION_SCREENSHOTURLS ", r'set\(EXTENSION_DEPENDS "?NA"?\)',
                    r"find_package\(Slicer REQUIRED\)", r"include\(\$\{Slicer_USE_FILE\}\)",
                    r"add_subdirectory\(LuDosimetry\)", r"include\(\$\{Slicer_EXTENSION_GENERATE_CONFIG\}\)",
                    r"include\(\$\{Slicer_EXTENSION_CPACK\}\)"):
        assert re.search(pattern, text), pattern
    # The extension icon it advertises is in the repository.
    variables = dict(re.findall(r'set\((\w+) "([^"]*)"\)', text))
    icon_url = variables["EXTENSION_ICONURL"]
    while "${" in icon_url:
        icon_url = re.sub(r"\$\{(\w+)\}", lambda m: variables[m.group(1)], icon_url)
    assert icon_url.startswith("https://") and "/raw/main/" in icon_url
    assert (ROOT / icon_url.split("/raw/main/", 1)[1]).is_file()


def test_module_cmakelists_builds_a_scripted_module_with_tests():
    text = _cmake_text(MODULE_DIR / "CMakeLists.txt")
    assert "slicerMacroBuildScriptedModule(" in text
    assert "WITH_GENERIC_TESTS" in text
    assert re.search(r"slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text)
    assert re.search(r"set\(MODULE_NAME LuDosimetry\)", text)
    resources = re.search(r"set\(MODULE_PYTHON_RESOURCES(.*?)\)", text, re.S).group(1).split()
    assert len(resources) == 2
    for resource in resources:
        assert (MODULE_DIR / resource.replace("${MODULE_NAME}", "LuDosimetry")).is_file(), resource


def _png_size(path: Path):
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_icons_are_128_pixel_pngs():
    assert _png_size(MODULE_DIR / "Resources" / "Icons" / "LuDosimetry.png") == (128, 128)
    assert _png_size(ROOT / "Resources" / "LuDosimetry.png") == (128, 128)


def _normalised(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", requirement.replace(" ", "").lower())


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def test_required_packages_equal_pyproject_dependencies():
    declared = _pyproject()["dependencies"]
    assert sorted(_normalised(r) for _, r in dependencies.REQUIRED_PACKAGES) == sorted(map(_normalised, declared))
    # Each import name is the package's (what missing_requirements looks for).
    for module_name, requirement in dependencies.REQUIRED_PACKAGES:
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", module_name), module_name


def _version(requirement: str):
    return tuple(int(p) for p in re.search(r"==\s*([0-9.]+)", requirement).group(1).split("."))


def test_reconstruction_packages_pin_a_torch_for_the_python_version():
    expression = _top_level_value("TORCH_REQUIREMENT", ast.parse((LIB_DIR / "dependencies.py").read_text()))
    code = compile(ast.Expression(expression), "TORCH_REQUIREMENT", "eval")
    on = {version: eval(code, {"sys": SimpleNamespace(version_info=version)}) for version in ((3, 9, 13), (3, 12, 0))}
    assert on[(3, 9, 13)].startswith("torch==") and _version(on[(3, 9, 13)]) <= (2, 8, 0)  # newest with 3.9 wheels
    assert on[(3, 12, 0)].startswith("torch==") and _version(on[(3, 12, 0)]) >= (2, 0)
    assert dependencies.TORCH_REQUIREMENT == on[(3, 9, 13) if sys.version_info < (3, 10) else (3, 12, 0)]
    names = [module_name for module_name, _ in dependencies.RECON_PACKAGES]
    assert names == ["torch", "pytomography"]  # torch first: pytomography must not bring another build
    extra = {re.split(r"[<>=!~ ]", r)[0]: r for r in _pyproject()["optional-dependencies"]["recon"]}
    assert _normalised(dict(dependencies.RECON_PACKAGES)["pytomography"]) == _normalised(extra["pytomography"])
    assert "torch" in extra


def test_missing_requirements_finds_what_cannot_be_imported():
    packages = (("json", "json"), ("no_such_module_ludosimetry", "nope>=1"), ("csv", "csv"))
    assert dependencies.missing_requirements(packages) == ["nope>=1"]
    assert dependencies.missing_requirements(()) == []


# A stand-in for Slicer's build macros. The install location follows the rule of CTK's
# ctkMacroCompilePythonScript (called by slicerMacroBuildScriptedModule): a relative script goes to
# <destination>/<path>, an absolute one to <destination>/<path relative to the current binary folder>;
# RESOURCES are relative to the module's source folder. Files must exist at configure time.
_FAKE_SLICER_PROJECT = r"""
cmake_minimum_required(VERSION 3.16)
project(FakeSlicerExtension NONE)
set(BUILD_TESTING ON)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-5.8/qt-scripted-modules")
set(_dest "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "unknown arguments: ${MY_SLICER_UNPARSED_ARGUMENTS}")
  endif()
  foreach(_f ${MY_SLICER_SCRIPTS})
    if(IS_ABSOLUTE "${_f}")
      set(_src "${_f}")
      file(RELATIVE_PATH _tgt "${CMAKE_CURRENT_BINARY_DIR}" "${_f}")
    else()
      set(_src "${CMAKE_CURRENT_SOURCE_DIR}/${_f}")
      set(_tgt "${_f}")
    endif()
    if(NOT EXISTS "${_src}")
      message(FATAL_ERROR "nonexistent script ${_f}")
    endif()
    file(APPEND "${CMAKE_BINARY_DIR}/scripts.txt" "${_src}|${_dest}/${_tgt}\n")
  endforeach()
  foreach(_f ${MY_SLICER_RESOURCES})
    if(NOT EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/${_f}")
      message(FATAL_ERROR "nonexistent resource ${_f}")
    endif()
    file(APPEND "${CMAKE_BINARY_DIR}/resources.txt" "${_dest}/${_f}\n")
  endforeach()
  file(WRITE "${CMAKE_BINARY_DIR}/module.txt" "${MY_SLICER_NAME}|${MY_SLICER_WITH_GENERIC_TESTS}\n")
endmacro()
macro(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT" "SLICER_ARGS" ${ARGN})
  file(APPEND "${CMAKE_BINARY_DIR}/unittests.txt" "${MY_SCRIPT}\n")
endmacro()
add_subdirectory("@MODULE_DIR@" "${CMAKE_BINARY_DIR}/LuDosimetry")
"""


def test_module_cmake_installs_the_library_under_the_module_folder(tmp_path):
    """Every .py of the module folder (LuDosimetry.py, Scripts/run_study.py) and of LuDosimetryLib lands in
    <qt-scripted-modules>, the library as the LuDosimetryLib package beside the module and the script's folder."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    source, build = tmp_path / "src", tmp_path / "build"
    source.mkdir()
    (source / "CMakeLists.txt").write_text(_FAKE_SLICER_PROJECT.replace("@MODULE_DIR@", MODULE_DIR.as_posix()))
    run = subprocess.run([cmake, "-S", str(source), "-B", str(build)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr

    dest = (build / "lib" / "Slicer-5.8" / "qt-scripted-modules").resolve()
    scripts = {}
    for line in (build / "scripts.txt").read_text().splitlines():
        src, tgt = line.split("|")
        scripts[Path(tgt).resolve()] = Path(src)
    module_files = {dest / p.relative_to(MODULE_DIR): p for p in MODULE_DIR.rglob("*.py")}
    library_files = {dest / "LuDosimetryLib" / p.relative_to(LIB_DIR): p for p in LIB_DIR.rglob("*.py")}
    assert dest / "Scripts" / "run_study.py" in module_files
    assert set(scripts) == set(module_files) | set(library_files)
    for target, src in scripts.items():
        original = module_files.get(target) or library_files[target]
        assert src.read_bytes() == original.read_bytes(), target
    # The installed script finds the library where its search for it looks (the script folder's parent).
    assert (dest / "Scripts").parent / "LuDosimetryLib" / "__init__.py" in scripts
    resources = {Path(p).resolve() for p in (build / "resources.txt").read_text().splitlines()}
    assert resources == {dest / "Resources" / "Icons" / "LuDosimetry.png", dest / "Resources" / "UI" / "LuDosimetry.ui"}
    assert (build / "module.txt").read_text().strip() == "LuDosimetry|TRUE"
    assert (build / "unittests.txt").read_text().split() == ["LuDosimetry.py"]
    for data_file in (LIB_DIR / "data").glob("*"):
        if data_file.is_file():
            assert (dest / "LuDosimetryLib" / "data" / data_file.name).read_bytes() == data_file.read_bytes()
