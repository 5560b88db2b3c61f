"""Checks of the 3D Slicer extension that run without Slicer.

- structure: the .ui is a valid Qt Designer form, the names the module looks up exist in it, each
  ``SlicerParameterName`` is a parameter of the parameter-node class and its widget can show that
  parameter's type, every .py parses as Python 3.9, the library imports no Qt/Slicer, the module's
  top-level imports are the ones every scripted module has, the CMake files are a Slicer extension,
  the icons are 128 x 128 PNGs, the module's package list matches pyproject.toml;
- CMake: the module's CMakeLists.txt, configured under a stand-in for Slicer's build macros, puts
  every LuDosimetryLib file under ``<qt-scripted-modules>/LuDosimetryLib/`` (needs ``cmake``);
- behaviour: LuDosimetry.py imported over stand-in ``slicer``/``qt``/``ctk``/``vtk`` modules, so that its
  pure helpers and the wiring of the logic to ``run_study``/``write_outputs`` can be exercised.
"""
from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import struct
import subprocess
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "LuDosimetry"
MODULE_PY = MODULE_DIR / "LuDosimetry.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "LuDosimetry.ui"
LIB_DIR = ROOT / "LuDosimetryLib"

# Modules every scripted module may import at its top level (besides the standard library).
ALLOWED_TOP_LEVEL_IMPORTS = {"slicer", "vtk", "qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.util",
                             "slicer.parameterNodeWrapper"}
# What the library must never import (it runs in plain Python too).
GUI_MODULES = {"qt", "ctk", "slicer", "vtk", "sitkUtils", "PythonQt", "__main__"}


def _module_tree() -> ast.Module:
    return ast.parse(MODULE_PY.read_text(encoding="utf-8"), filename=str(MODULE_PY))


def _ui_root() -> ET.Element:
    return ET.parse(UI_FILE).getroot()


def _ui_widgets() -> list:
    return list(_ui_root().iter("widget"))


def _dynamic_string_property(widget: ET.Element, name: str):
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            text = prop.find("string")
            return None if text is None else text.text
    return None


def _parameter_node_fields() -> dict:
    """``{name: annotation AST}`` of the class decorated with ``@parameterNodeWrapper``."""
    for node in _module_tree().body:
        if isinstance(node, ast.ClassDef) and any(
                (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper")
                or (isinstance(d, ast.Attribute) and d.attr == "parameterNodeWrapper")
                for d in node.decorator_list):
            return {stmt.target.id: stmt.annotation for stmt in node.body
                    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)}
    raise AssertionError("no @parameterNodeWrapper class in LuDosimetry.py")


def _split_annotation(annotation: ast.AST):
    """(base type name, [names of the Annotated[...] extras called]) of a parameter annotation."""
    extras = []
    if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value).split(".")[-1] == "Annotated":
        elements = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
        annotation = elements[0]
        extras = [ast.unparse(e.func).split(".")[-1] for e in elements[1:] if isinstance(e, ast.Call)]
    return ast.unparse(annotation), extras


# ---------------------------------------------------------------------------------------------------
# The .ui form


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


# Stand-ins for the CTK/MRML widget classes of the form, for loading it with PyQt5's uic.
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
    """Qt's own form loader accepts every property of the Qt widgets (optional: needs PyQt5)."""
    pytest.importorskip("PyQt5.QtWidgets")
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    from PyQt5 import uic
    from PyQt5.QtWidgets import QApplication, QDoubleSpinBox, QTableWidget

    for name, code in _QT_CUSTOM_WIDGETS.items():
        (tmp_path / f"{name}.py").write_text(code)
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    _app = QApplication.instance() or QApplication([])  # kept alive while the form loads
    form = uic.loadUi(str(UI_FILE))
    spin = form.findChild(QDoubleSpinBox, "injectedActivitySpinBox")
    assert spin.specialValueText() == "from DICOM headers" and spin.value() == spin.minimum() == 0.0
    assert spin.property("SlicerParameterName") == "injectedActivityMBq"
    assert form.findChild(QTableWidget, "resultsTableWidget").editTriggers() == QTableWidget.NoEditTriggers
    from PyQt5.QtWidgets import QDateTimeEdit
    when = form.findChild(QDateTimeEdit, "injectionTimeEdit")
    assert when.specialValueText() == "from DICOM headers" and when.property("SlicerParameterName") == "injectionTime"
    for name in ("inventoryTableWidget", "fitsTableWidget", "voiModelsTableWidget"):
        assert form.findChild(QTableWidget, name).editTriggers() == QTableWidget.NoEditTriggers, name
    from PyQt5.QtWidgets import QComboBox, QLineEdit, QPushButton, QSpinBox
    reduced = form.findChild(QLineEdit, "reducedTimePointsLineEdit")
    assert reduced.placeholderText() == "all (e.g. 2,3)" and reduced.property("SlicerParameterName") == "reducedTimePoints"
    for name, parameter in (("registrationMethodComboBox", "registrationMethod"), ("voiModeComboBox", "voiMode"),
                            ("tiaMapComboBox", "tiaMap"), ("reducedMethodComboBox", "reducedMethod")):
        assert form.findChild(QComboBox, name).property("SlicerParameterName") == parameter
    assert form.findChild(QTableWidget, "voiModelsTableWidget").property("SlicerParameterName") == "voiModels"
    assert form.findChild(QSpinBox, "registrationCheckTimePointSpinBox").maximum() == 9
    kernel_density = form.findChild(QDoubleSpinBox, "kernelDensitySpinBox")
    assert kernel_density.value() == 1.0 and kernel_density.suffix() == " g/mL"
    assert kernel_density.property("SlicerParameterName") == "kernelDensityGMl"
    assert not form.findChild(QPushButton, "showRegistrationCheckButton").isEnabled()
    # The MRML widgets get the scene from the form.
    receivers = {slot.__self__.objectName() for slot in form.mrmlSceneChanged.slots}
    assert receivers == {"voiSegmentationSelector", "tacPlotWidget", "dvhPlotWidget"}


def test_widget_names_used_by_the_module_exist_in_the_ui():
    ui_names = {w.get("name") for w in _ui_widgets()}
    used = set()
    for node in ast.walk(_module_tree()):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ui" and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "self"):
            used.add(node.attr)
    assert used, "the module looks up no self.ui.<name>"
    assert used <= ui_names, f"not in the .ui: {sorted(used - ui_names)}"


def test_every_slicer_parameter_name_is_a_parameter_its_widget_can_show():
    fields = _parameter_node_fields()
    # Which (widget class, parameter type) pairs Slicer's parameterNodeWrapper connectors handle
    # (slicer/parameterNodeWrapper/guiConnectors.py), plus the module's own ctkPathLineEdit <-> str one.
    supported = {
        "QCheckBox": {"bool"}, "ctkCheckBox": {"bool"}, "QPushButton": {"bool"},
        "QSpinBox": {"int"}, "QSlider": {"int"},
        "QDoubleSpinBox": {"float", "int"}, "ctkDoubleSpinBox": {"float", "int"},
        "ctkSliderWidget": {"float", "int"},
        "QComboBox": {"str", "int", "float", "bool"}, "ctkComboBox": {"str", "int", "float", "bool"},
        "QLineEdit": {"str"}, "QLabel": {"str"}, "QTextEdit": {"str"},
        "ctkPathLineEdit": {"str", "pathlib.Path", "Path"},
        "ctkDirectoryButton": {"pathlib.Path", "Path"},
        # the module's own QDateTimeEdit <-> ISO 8601 str connector
        "QDateTimeEdit": {"str"},
        "qMRMLNodeComboBox": {"slicer.vtkMRMLSegmentationNode", "vtkMRMLSegmentationNode"},
        # the module's own per-VOI model table <-> JSON str connector (tied to that one table by name)
        "QTableWidget": {"str"},
    }
    connected = {}
    for widget in _ui_widgets():
        parameter = _dynamic_string_property(widget, "SlicerParameterName")
        if parameter is None:
            continue
        assert parameter in fields, f"{widget.get('name')}: SlicerParameterName {parameter!r} is not a parameter"
        assert parameter not in connected, f"{parameter!r} is connected twice"
        connected[parameter] = widget
        base, extras = _split_annotation(fields[parameter])
        cls = widget.get("class")
        assert base in supported.get(cls, set()), f"{widget.get('name')} ({cls}) cannot show a {base} parameter"
        if cls == "QTableWidget":
            assert widget.get("name") == "voiModelsTableWidget", f"{widget.get('name')}: no connector for this table"
        if cls in ("QComboBox", "ctkComboBox"):
            assert "Choice" in extras, f"{parameter}: a combo box needs Annotated[..., Choice([...])]"
        if cls == "ctkSliderWidget":
            assert "WithinRange" in extras, f"{parameter}: a slider needs Annotated[..., WithinRange(...)]"
    # The panel of this issue shows every option it stores.
    assert set(connected) == set(fields)
    # SlicerParameterName is a dynamic property (stdset="0"), or Qt rejects it.
    for widget in connected.values():
        prop = [p for p in widget.findall("property") if p.get("name") == "SlicerParameterName"][0]
        assert prop.get("stdset") == "0"


def test_dose_method_choices_are_the_library_methods():
    base, extras = _split_annotation(_parameter_node_fields()["doseMethod"])
    assert base == "str" and extras == ["Choice"]
    choice = [e for e in ast.walk(_parameter_node_fields()["doseMethod"])
              if isinstance(e, ast.Call) and ast.unparse(e.func).endswith("Choice")][0]
    assert ast.literal_eval(choice.args[0]) == ["dvk", "ldm"]


# ---------------------------------------------------------------------------------------------------
# Python sources


def _python_files():
    return sorted(MODULE_DIR.rglob("*.py")) + sorted(LIB_DIR.rglob("*.py"))


def test_python_sources_parse_as_python_3_9():
    files = _python_files()
    assert MODULE_PY in files and (LIB_DIR / "__init__.py") in files
    for path in files:
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))


def _imported_modules(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node, node.module


def test_library_imports_no_qt_ctk_or_slicer():
    offenders = []
    for path in sorted(LIB_DIR.rglob("*.py")):
        if path.name.startswith("mrml"):
            continue
        for node, name in _imported_modules(ast.parse(path.read_text(encoding="utf-8"))):
            if name.split(".")[0] in GUI_MODULES:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: import {name}")
    assert not offenders, "\n".join(offenders)


def _stdlib_names() -> set:
    names = getattr(sys, "stdlib_module_names", None)
    if names is None:  # Python 3.9: the modules the module file may use
        names = {"importlib", "logging", "math", "pathlib", "traceback", "typing", "os", "sys", "tempfile",
                 "json", "re", "unittest", "datetime", "functools", "collections", "dataclasses", "csv", "io",
                 "shutil"}
    return set(names)


def test_module_top_level_imports_are_those_of_every_scripted_module():
    stdlib = _stdlib_names()
    for node in _module_tree().body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for _, name in _imported_modules(node):
                assert name.split(".")[0] in stdlib or name in ALLOWED_TOP_LEVEL_IMPORTS, \
                    f"LuDosimetry.py:{node.lineno}: top-level import {name}"


def test_module_defines_the_four_scripted_module_classes():
    classes = {node.name: [ast.unparse(b) for b in node.bases]
               for node in _module_tree().body if isinstance(node, ast.ClassDef)}
    assert classes["LuDosimetry"] == ["ScriptedLoadableModule"]
    assert classes["LuDosimetryWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert classes["LuDosimetryLogic"] == ["ScriptedLoadableModuleLogic"]
    assert classes["LuDosimetryTest"] == ["ScriptedLoadableModuleTest"]


# ---------------------------------------------------------------------------------------------------
# CMake and resources


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


def test_required_packages_match_pyproject():
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    tree = _module_tree()
    value = [n.value for n in tree.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
             and n.target.id == "REQUIRED_PACKAGES"][0]
    packages = ast.literal_eval(value)
    normalise = lambda r: re.sub(r"[-_.]+", "-", r.replace(" ", "").lower())  # noqa: E731
    assert sorted(normalise(r) for _, r in packages) == sorted(normalise(r) for r in declared)


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
    expected = {dest / "LuDosimetry.py"} | {dest / "LuDosimetryLib" / p.relative_to(LIB_DIR)
                                            for p in LIB_DIR.rglob("*.py")}
    assert set(scripts) == expected
    for target, src in scripts.items():
        original = MODULE_PY if target.name == "LuDosimetry.py" and target.parent == dest \
            else LIB_DIR / target.relative_to(dest / "LuDosimetryLib")
        assert src.read_bytes() == original.read_bytes(), target
    resources = {Path(p).resolve() for p in (build / "resources.txt").read_text().splitlines()}
    assert resources == {dest / "Resources" / "Icons" / "LuDosimetry.png", dest / "Resources" / "UI" / "LuDosimetry.ui"}
    assert (build / "module.txt").read_text().strip() == "LuDosimetry|TRUE"
    assert (build / "unittests.txt").read_text().split() == ["LuDosimetry.py"]
    for data_file in (LIB_DIR / "data").glob("*"):
        if data_file.is_file():
            assert (dest / "LuDosimetryLib" / "data" / data_file.name).read_bytes() == data_file.read_bytes()


# ---------------------------------------------------------------------------------------------------
# Behaviour over stand-in Slicer modules


class _Base:
    def __init__(self, *args, **kwargs):
        pass


class _FakeScriptedLogic(_Base):
    def getParameterNode(self):
        raise AssertionError("not used outside Slicer")


class _GuiConnector:
    """Stand-in for slicer.parameterNodeWrapper.GuiConnector: ``onChanged(callback)`` connects (None
    disconnects), ``changed()`` calls the callback."""

    def __init__(self, *args, **kwargs):
        self._callback = None

    def onChanged(self, callback):
        self._callback = callback
        self._disconnect() if callback is None else self._connect()

    def changed(self):
        if self._callback:
            self._callback()


def _fake_slicer_modules() -> dict:
    slicer = types.ModuleType("slicer")
    slicer.mrmlScene = None
    slicer.vtkMRMLSegmentationNode = type("vtkMRMLSegmentationNode", (), {})  # a parameter's annotation
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    slm.ScriptedLoadableModule = slm.ScriptedLoadableModuleWidget = _Base
    slm.ScriptedLoadableModuleTest = type("ScriptedLoadableModuleTest", (), {})
    slm.ScriptedLoadableModuleLogic = _FakeScriptedLogic
    util = types.ModuleType("slicer.util")
    util.VTKObservationMixin = type("VTKObservationMixin", (), {"__init__": lambda self: None})
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.Choice = pnw.WithinRange = lambda *args, **kwargs: None
    pnw.GuiConnector = _GuiConnector
    pnw.parameterNodeGuiConnector = pnw.parameterNodeWrapper = lambda cls: cls
    pnw.unannotatedType = lambda datatype: datatype
    slicer.ScriptedLoadableModule, slicer.util, slicer.parameterNodeWrapper = slm, util, pnw
    return {"slicer": slicer, "slicer.ScriptedLoadableModule": slm, "slicer.util": util,
            "slicer.parameterNodeWrapper": pnw, "qt": types.ModuleType("qt"),
            "ctk": types.ModuleType("ctk"), "vtk": types.ModuleType("vtk")}


@pytest.fixture
def module(monkeypatch):
    """LuDosimetry.py imported over stand-in Slicer modules."""
    for name, fake in _fake_slicer_modules().items():
        monkeypatch.setitem(sys.modules, name, fake)
    spec = importlib.util.spec_from_file_location("LuDosimetry_under_test", MODULE_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_module_imports_without_the_library(module):
    # Importing the module file must not import LuDosimetryLib (the panel shows before its deps exist).
    tree = _module_tree()
    top_level = [name for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                 for _, name in _imported_modules(node)]
    assert not any(name.startswith("LuDosimetryLib") for name in top_level)
    assert [c for c, _ in module.RESULT_COLUMNS][:2] == ["volume_ml", "mass_g"]


def test_pure_helpers(module, tmp_path):
    assert module.activityMBqToBq(0.0) is None
    assert module.activityMBqToBq(7400.0) == pytest.approx(7.4e9)
    assert module.defaultOutputDirectory(tmp_path / "patient01") == tmp_path / "patient01-dosimetry"
    assert module.formatValue("mean_dose_gy", 1.23456) == "1.235"
    assert module.formatValue("tia_bq_s", 1.5e12) == "1.500e+12"
    assert module.formatValue("fit_model", "bi_exponential") == "bi_exponential"
    assert module.formatValue("effective_half_life_h", None) == ""
    assert module.formatValue("d2_gy", float("nan")) == "nan"
    assert module.missingRequirements((("json", "json"), ("no_such_module_ludosimetry", "nope>=1"))) == ["nope>=1"]


def test_result_rows_follow_the_vois_and_columns(module):
    full = {c: 1.0 for c, _ in module.RESULT_COLUMNS}
    results = SimpleNamespace(vois={"liver": SimpleNamespace(**{**full, "mean_dose_gy": 4.5,
                                                                 "fit_model": "mono_exponential"}),
                                    "kidney_left": SimpleNamespace(mean_dose_gy=3.0, volume_ml=150.0)})
    rows = module.resultRows(results)
    assert [name for name, _ in rows] == ["liver", "kidney_left"]
    columns = [c for c, _ in module.RESULT_COLUMNS]
    assert rows[0][1][columns.index("mean_dose_gy")] == 4.5
    assert rows[0][1][columns.index("fit_model")] == "mono_exponential"
    assert rows[1][1][columns.index("volume_ml")] == 150.0
    assert rows[0][1][columns.index("d98_gy")] == 1.0
    assert rows[1][1][columns.index("d98_gy")] is None  # an attribute the library leaves out
    assert all(len(values) == len(columns) for _, values in rows)


def _fake_pipeline(calls: list, monkeypatch):
    """A stand-in LuDosimetryLib.pipeline that records how the logic calls it."""
    fake = types.ModuleType("LuDosimetryLib.pipeline")

    class RunOptions:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    def run_study(study_dir, options, progress=None):
        calls.append(("run_study", study_dir, dict(options.__dict__)))
        progress(0.5, "halfway")
        progress(1.0, "fitted")
        return SimpleNamespace(vois={}, warnings=[])

    def write_outputs(results, out_dir, overwrite=False):
        calls.append(("write_outputs", out_dir, overwrite))
        out_dir.mkdir()
        (out_dir / "results.json").write_text("{}")
        return out_dir

    fake.RunOptions, fake.run_study, fake.write_outputs = RunOptions, run_study, write_outputs
    monkeypatch.setitem(sys.modules, "LuDosimetryLib.pipeline", fake)


def test_logic_calls_the_pipeline_with_the_options(module, monkeypatch, tmp_path):
    calls, reports = [], []
    _fake_pipeline(calls, monkeypatch)
    study, out = tmp_path / "study", tmp_path / "out"
    study.mkdir()
    logic = module.LuDosimetryLogic()
    logic.run(str(study), str(out), dose_method="ldm", injected_activity_bq=7.4e9,
              spect_series_uid="1.2.3", progress=lambda f, m: reports.append((f, m)))
    assert calls[0] == ("run_study", study, {"dose_method": "ldm", "injected_activity_bq": 7.4e9,
                                             "injection_time": None, "spect_series_uid": "1.2.3"})
    assert calls[1] == ("write_outputs", out, False)
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions[0] == pytest.approx(0.45)
    assert ("halfway" in [m for _, m in reports]) and ("Done" in [m for _, m in reports])
    assert logic.lastNodes == {}  # no scene outside Slicer


def test_logic_refuses_bad_folders_before_computing(module, monkeypatch, tmp_path):
    from LuDosimetryLib.errors import OutputError, StudyError

    calls = []
    _fake_pipeline(calls, monkeypatch)
    logic = module.LuDosimetryLogic()
    with pytest.raises(StudyError, match="no study folder"):
        logic.run("", tmp_path / "out")
    with pytest.raises(OutputError, match="no output folder"):
        logic.run(tmp_path, "  ")
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        logic.run(tmp_path, full)
    with pytest.raises(OutputError, match="did not write"):
        logic.run(tmp_path, full, overwrite=True)
    assert calls == []  # refused before run_study


def test_cancel_from_the_progress_callback_propagates(module, monkeypatch, tmp_path):
    from LuDosimetryLib.errors import CancelledError

    calls = []
    _fake_pipeline(calls, monkeypatch)

    def cancel(fraction, message):
        raise CancelledError()

    with pytest.raises(CancelledError):
        module.LuDosimetryLogic().run(tmp_path, tmp_path / "out", progress=cancel)
    assert [c[0] for c in calls] == ["run_study"]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------
# Against the real library (skipped until the parts it needs exist)


def test_result_columns_are_fields_of_the_pipeline_voi_result(module):
    pipeline = pytest.importorskip("LuDosimetryLib.pipeline")
    import dataclasses

    fields = {f.name for f in dataclasses.fields(pipeline.VoiResult)}
    missing = [c for c, _ in module.RESULT_COLUMNS if c not in fields]
    assert not missing, f"VoiResult lacks {missing}"
    options = {f.name for f in dataclasses.fields(pipeline.RunOptions)}
    assert {"dose_method", "injected_activity_bq", "injection_time", "spect_series_uid"} <= options


def test_logic_on_the_synthetic_patient(module, tmp_path):
    try:
        from LuDosimetryLib.phantom import write_synthetic_patient
    except ImportError:
        pytest.skip("LuDosimetryLib.phantom.write_synthetic_patient is not there yet")
    import json
    import math

    study = write_synthetic_patient(tmp_path / "study", seed=0, fast=True)
    out = tmp_path / "out"
    reports = []
    results = module.LuDosimetryLogic().run(study, out, dose_method="ldm",
                                            progress=lambda f, m: reports.append(f))
    assert reports[-1] == 1.0 and reports == sorted(reports)
    saved = json.loads((out / "results.json").read_text())
    rows = module.resultRows(results)
    assert [name for name, _ in rows] == list(saved["vois"])
    for name, values in rows:
        for (attribute, _), value in zip(module.RESULT_COLUMNS, values):
            stored = saved["vois"][name][attribute]
            if isinstance(value, str) or value is None or stored is None:
                assert stored == value or (stored is None and (value is None or math.isnan(value))), \
                    f"{name}.{attribute}"
            else:
                assert math.isclose(stored, value, rel_tol=1e-9), f"{name}.{attribute}: {stored} != {value}"


# ---------------------------------------------------------------------------------------------------
# Pure helpers of the panel's sections


def test_panel_helpers(module, tmp_path):
    from datetime import datetime

    from LuDosimetryLib.errors import StudyError

    assert module.injectionTimeFromText("") is None and module.injectionTimeFromText("  ") is None
    assert module.injectionTimeFromText("2024-03-05T09:30:00") == datetime(2024, 3, 5, 9, 30)
    with pytest.raises(StudyError, match="'yesterday' is not an ISO 8601"):
        module.injectionTimeFromText("yesterday")
    assert module.safeFolderName("Doe Jane / 20240102 / Lu-177") == "Doe_Jane___20240102___Lu-177"
    assert module.safeFolderName("///") == "study"
    assert module.editedOutputDirectory(tmp_path / "out") == tmp_path / "out-edited"
    assert module.defaultReconstructionDirectory(tmp_path / "out") == tmp_path / "out-recon"
    # Every parameter-node option of the Reconstruction section is a ReconOptions field.
    recon = pytest.importorskip("LuDosimetryLib.recon.reconstruct")
    _, options = module.importReconstruction()
    assert options is recon.ReconOptions
    fields = _parameter_node_fields()
    for parameter, values in (("reconAlgorithm", recon.ALGORITHMS), ("reconScatter", ("tew", "dew", "none"))):
        choice = [e for e in ast.walk(fields[parameter]) if isinstance(e, ast.Call)][0]
        assert tuple(ast.literal_eval(choice.args[0])) == tuple(values), parameter


def test_inventory_rows_and_projections(module):
    document = {
        "time_points": [{"index": 0, "hours_post_injection": 4.25}, {"index": 1, "hours_post_injection": None}],
        "series": [
            {"role": "spect_recon", "modality": "NM", "description": "SPECT 4h", "code": "C1S1D0", "time_point": 0,
             "files": 1, "form": None},
            {"role": "spect_projections", "modality": "NM", "description": "tomo", "code": None, "time_point": 1,
             "files": 3, "form": "unaltered"},
            {"role": "pet", "modality": "PT", "description": "Ga-68", "code": None, "time_point": None, "files": 90},
        ]}
    rows = module.inventoryRows(document)
    assert rows == [
        {"time_point": "TP1", "hours_post_injection": 4.25, "role": "spect_recon", "modality": "NM",
         "description": "SPECT 4h", "code": "C1S1D0", "files": 1},
        {"time_point": "TP2", "hours_post_injection": None, "role": "spect_projections (unaltered)", "modality": "NM",
         "description": "tomo", "code": "", "files": 3},
        {"time_point": "", "hours_post_injection": None, "role": "pet", "modality": "PT", "description": "Ga-68",
         "code": "", "files": 90}]
    assert module.hasProjections(document)
    assert not module.hasProjections({"series": document["series"][::2]})
    assert module.inventoryRows(None) == [] and not module.hasProjections(None)


def test_fit_rows_and_results_csv(module):
    import csv

    results = SimpleNamespace(vois={"liver": SimpleNamespace(fit_model="bi_exponential", effective_half_life_h=60.5,
                                                             tia_bq_s=1.0e12, tia_se_bq_s=None, tiac_h=40.1,
                                                             fit_warnings=["a", "b"])})
    assert module.fitRows(results) == [{"voi": "liver", "fit_model": "bi_exponential", "effective_half_life_h": 60.5,
                                        "tia_bq_s": 1.0e12, "tia_se_bq_s": None, "tiac_h": 40.1,
                                        "fit_warnings": "a; b"}]
    saved = {"vois": {"liver": {"volume_ml": 1500.123456789, "fit_model": "mono_exponential", "d2_gy": None},
                      "lesion, 1": {"volume_ml": 2.0}}}
    rows = list(csv.reader(module.resultsCsvText(saved).splitlines()))
    assert rows[0][0] == module.VOI_COLUMN and len(rows) == 3
    columns = [a for a, _ in module.RESULT_COLUMNS]
    assert rows[1][0] == "liver" and float(rows[1][1 + columns.index("volume_ml")]) == 1500.123456789
    assert rows[1][1 + columns.index("fit_model")] == "mono_exponential"
    assert rows[1][1 + columns.index("d2_gy")] == "" and rows[2][0] == "lesion, 1"


def test_write_file_atomically_refuses_to_overwrite(module, tmp_path):
    from LuDosimetryLib.errors import OutputError

    target = tmp_path / "a.txt"
    assert module.writeFileAtomically(target, b"one") == target and target.read_bytes() == b"one"
    with pytest.raises(OutputError, match="exists; not overwritten"):
        module.writeFileAtomically(target, b"two")
    assert target.read_bytes() == b"one"
    module.writeFileAtomically(target, b"three", overwrite=True)
    assert target.read_bytes() == b"three"
    with pytest.raises(OutputError, match="folder"):
        module.writeFileAtomically(tmp_path, b"x", overwrite=True)
    with pytest.raises(OutputError, match="folder does not exist"):
        module.writeFileAtomically(tmp_path / "missing" / "b.txt", b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temporary left


def test_make_study_view(module, tmp_path):
    from LuDosimetryLib.errors import OutputError, StudyError

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    files = [tmp_path / "a" / "x.dcm", tmp_path / "b" / "x.dcm"]
    for k, f in enumerate(files):
        f.write_bytes(bytes([k]))
    view = module.makeStudyView(files, tmp_path / "view")
    links = sorted(view.iterdir())
    assert [p.name for p in links] == ["000001_x.dcm", "000002_x.dcm"]  # same names do not collide
    assert all(p.is_symlink() for p in links) and [p.read_bytes() for p in links] == [b"\x00", b"\x01"]
    with pytest.raises(OutputError, match="not an empty folder"):
        module.makeStudyView(files, view)
    with pytest.raises(StudyError, match="no files"):
        module.makeStudyView([], tmp_path / "v2")
    with pytest.raises(StudyError, match="does not exist"):
        module.makeStudyView([tmp_path / "nope.dcm"], tmp_path / "v3")


# ---------------------------------------------------------------------------------------------------
# Registration, TIA map, reduced time points and per-VOI models (issue #5)


def _choices(parameter: str) -> list:
    call = [e for e in ast.walk(_parameter_node_fields()[parameter])
            if isinstance(e, ast.Call) and ast.unparse(e.func).endswith("Choice")][0]
    return ast.literal_eval(call.args[0])


def test_new_option_choices_are_the_library_values(module):
    assert _choices("registrationMethod") == list(module.REGISTRATION_METHODS) == ["none", "rigid", "deformable"]
    assert _choices("voiMode") == list(module.VOI_MODES) == ["per-time-point", "reference-only"]
    assert _choices("tiaMap") == list(module.TIA_MAP_METHODS) == ["voi", "voxel"]
    assert _choices("reducedMethod") == list(module.REDUCED_METHODS)
    reduced = pytest.importorskip("LuDosimetryLib.kinetics.reduced")
    assert set(module.REDUCED_METHODS) <= set(reduced.METHODS)
    from LuDosimetryLib.kinetics import MODELS
    assert [c for c, _ in module.MODEL_CHOICES] == ["auto", "mono", "bi", "tri", "trapezoid"]
    for choice, models in module.MODEL_CHOICES[1:]:
        assert models and set(models) <= set(MODELS), choice
    # The pipeline's defaults are the panel's defaults.
    import dataclasses

    from LuDosimetryLib.pipeline import RunOptions
    defaults = {f.name: f.default for f in dataclasses.fields(RunOptions)}
    assert (defaults["registration"], defaults["vois"], defaults["tia_map"], defaults["reduced_method"]) == \
        ("none", "per-time-point", "voi", "population_prior")
    optional = [a for a, _ in module.OPTIONAL_RESULT_COLUMNS]
    assert optional == ["tia_full_bq_s", "reduced_relative_difference"]
    from LuDosimetryLib.pipeline import VoiResult
    assert set(optional) <= {f.name for f in dataclasses.fields(VoiResult)}


def test_time_points_and_voi_model_helpers(module):
    from LuDosimetryLib.errors import StudyError

    assert module.timePointsFromText("") is None and module.timePointsFromText("  ") is None
    assert module.timePointsFromText("2,3") == (2, 3)
    assert module.timePointsFromText(" 1; 3 4") == (1, 3, 4)
    for bad in ("2,x", "0,2", "-1", "2.5"):
        with pytest.raises(StudyError, match="not a list of time point numbers"):
            module.timePointsFromText(bad)

    assert module.parseVoiModels("") == {}
    text = module.formatVoiModels({"Liver": "trapezoid", "Kidney_L": "auto", "Lésion 1": "bi"})
    assert list(module.parseVoiModels(text).items()) == [("Liver", "trapezoid"), ("Kidney_L", "auto"),
                                                         ("Lésion 1", "bi")]
    assert module.formatVoiModels({}) == ""
    with pytest.raises(StudyError, match="'Liver': model 'quad' is not one of auto, mono"):
        module.parseVoiModels('{"Liver": "quad"}')
    with pytest.raises(StudyError, match="not a JSON object"):
        module.parseVoiModels('["Liver"]')
    with pytest.raises(StudyError, match="not a JSON object"):
        module.parseVoiModels("Liver=mono")

    # New VOIs come in on auto, known ones keep their choice, vanished ones go, order of the study.
    merged = module.voiModelsWithNames(text, ["Spleen", "Liver", "Kidney_L"])
    assert list(module.parseVoiModels(merged).items()) == [("Spleen", "auto"), ("Liver", "trapezoid"),
                                                           ("Kidney_L", "auto")]
    assert module.parseVoiModels(module.voiModelsWithNames("garbage", ["A"])) == {"A": "auto"}

    assert module.modelsPerVoiFromText(text) == {"Liver": ("trapezoid",), "Lésion 1": ("bi_exponential",)}
    assert module.modelsPerVoiFromText(module.voiModelsWithNames("", ["A", "B"])) is None
    assert module.modelsPerVoiFromText("") is None


def _panel_defaults(module) -> SimpleNamespace:
    """The parameter node's defaults, read from the class (the wrapper is a stand-in here)."""
    cls = module.LuDosimetryParameterNode
    return SimpleNamespace(**{name: getattr(cls, name) for name in _parameter_node_fields()
                              if hasattr(cls, name)})


def test_panel_options_reach_run_options(module):
    from LuDosimetryLib.errors import StudyError
    from LuDosimetryLib.pipeline import RunOptions

    node = _panel_defaults(module)
    defaults = module.pipelineOptionsFromParameters(node)
    assert defaults == dict(pvc="none", psf_fwhm_mm=None, density_correction=True, reference_time_point=0,
                            registration="none", vois="per-time-point", tia_map="voi", time_points=None,
                            reduced_method="population_prior", models_per_voi=None, kernel_path=None,
                            kernel_density_g_ml=1.0)
    plain = module.LuDosimetryLogic.runOptions(**defaults)
    assert plain == RunOptions()  # the panel's defaults are the library's

    node.registrationMethod, node.voiMode, node.tiaMap = "rigid", "reference-only", "voxel"
    node.reducedTimePoints, node.reducedMethod, node.referenceTimePoint = "1, 3", "two_point", 0
    node.voiModels = module.formatVoiModels({"Liver": "trapezoid", "Spleen": "auto", "Kidney_L": "mono"})
    options = module.LuDosimetryLogic.runOptions(dose_method="ldm", **module.pipelineOptionsFromParameters(node))
    assert isinstance(options, RunOptions)
    assert (options.registration, options.vois, options.tia_map) == ("rigid", "reference-only", "voxel")
    assert (options.time_points, options.reduced_method) == ((1, 3), "two_point")
    assert options.models_per_voi == {"Liver": ("trapezoid",), "Kidney_L": ("mono_exponential",)}
    assert options.dose_method == "ldm"
    assert options.kernel_path is None  # no kernel file: the built kernel

    node.kernelFile, node.kernelDensityGMl = "  /data/DK_softtissue.hdr ", 1.04
    options = module.LuDosimetryLogic.runOptions(**module.pipelineOptionsFromParameters(node))
    assert (options.kernel_path, options.kernel_density_g_ml) == ("/data/DK_softtissue.hdr", 1.04)

    node.reducedTimePoints = "two"
    with pytest.raises(StudyError, match="'two' is not a list"):
        module.pipelineOptionsFromParameters(node)


def test_logic_passes_the_new_options_to_the_pipeline(module, monkeypatch, tmp_path):
    calls = []
    _fake_pipeline(calls, monkeypatch)
    study = tmp_path / "study"
    study.mkdir()
    module.LuDosimetryLogic().run(study, tmp_path / "out", dose_method="ldm", registration="deformable",
                                  vois="reference-only", tia_map="voxel", time_points=[2, 3],
                                  reduced_method="hanscheid", models_per_voi={"Liver": ["trapezoid"]},
                                  kernel_path="k.hdr", kernel_density_g_ml=1.03)
    options = calls[0][2]
    assert options["kernel_path"] == "k.hdr" and options["kernel_density_g_ml"] == 1.03
    assert options["registration"] == "deformable" and options["vois"] == "reference-only"
    assert options["tia_map"] == "voxel" and options["time_points"] == (2, 3)
    assert options["reduced_method"] == "hanscheid" and options["models_per_voi"] == {"Liver": ("trapezoid",)}


def test_results_columns_show_the_reduced_time_point_comparison(module):
    full = {c: 1.0 for c, _ in module.RESULT_COLUMNS}
    plain = SimpleNamespace(vois={"Liver": SimpleNamespace(**full, tia_full_bq_s=None,
                                                           reduced_relative_difference=None)})
    assert module.resultColumnsFor(plain) == list(module.RESULT_COLUMNS)
    reduced = SimpleNamespace(vois={"Liver": SimpleNamespace(**full, tia_full_bq_s=2.0e12,
                                                             reduced_relative_difference=-0.05),
                                    "Spleen": SimpleNamespace(**full)})
    columns = module.resultColumnsFor(reduced)
    assert columns == list(module.RESULT_COLUMNS) + list(module.OPTIONAL_RESULT_COLUMNS)
    rows = dict(module.resultRows(reduced, columns))
    assert rows["Liver"][-2:] == [2.0e12, -0.05] and rows["Spleen"][-2:] == [None, None]
    assert module.formatValue("tia_full_bq_s", 2.0e12) == "2.000e+12"

    import csv
    saved = {"vois": {"Liver": {"volume_ml": 1.0, "tia_full_bq_s": 2.0e12, "reduced_relative_difference": -0.05},
                      "Spleen": {"volume_ml": 2.0, "tia_full_bq_s": None}}}
    rows = list(csv.reader(module.resultsCsvText(saved).splitlines()))
    assert rows[0][-2:] == [t for _, t in module.OPTIONAL_RESULT_COLUMNS]
    assert rows[1][-2:] == [repr(2.0e12), repr(-0.05)] and rows[2][-2:] == ["", ""]
    assert "TIA all time points (Bq·s)" not in module.resultsCsvText({"vois": {"Liver": {"volume_ml": 1.0}}})


class _Signal:
    """A PythonQt signal: slots are called without the signal's arguments when they take none."""

    def __init__(self):
        self.slots = []

    def connect(self, slot):
        self.slots.append(slot)

    def disconnect(self, slot):
        self.slots.remove(slot)

    def emit(self):
        for slot in list(self.slots):
            slot()


class _QComboBox:
    """The PythonQt API of QComboBox the connector uses (properties as attributes)."""

    def __init__(self):
        self.items, self.currentIndex, self.toolTip = [], -1, ""
        self.currentIndexChanged = _Signal()

    @property
    def currentText(self):
        return self.items[self.currentIndex] if self.currentIndex >= 0 else ""

    def addItem(self, text):
        self.items.append(text)
        if self.currentIndex < 0:
            self.setCurrentIndex(0)

    def findText(self, text):
        return self.items.index(text) if text in self.items else -1

    def setCurrentIndex(self, index):
        if index != self.currentIndex:
            self.currentIndex = index
            self.currentIndexChanged.emit()


class _QTableWidgetItem:
    def __init__(self, text):
        self._text, self.flags = text, None

    def text(self):
        return self._text

    def setFlags(self, flags):
        self.flags = flags


class _QTableWidget:
    def __init__(self, name):
        self.objectName, self.headers, self.cells, self.rowCount = name, [], {}, 0

    def setColumnCount(self, n):
        self.columns = n

    def setHorizontalHeaderLabels(self, labels):
        self.headers = list(labels)

    def setRowCount(self, n):
        self.rowCount = n
        self.cells = {k: v for k, v in self.cells.items() if k[0] < n}

    def setItem(self, row, column, item):
        self.cells[(row, column)] = item

    def item(self, row, column):
        return self.cells.get((row, column))

    def setCellWidget(self, row, column, widget):
        self.cells[(row, column)] = widget

    def cellWidget(self, row, column):
        return self.cells.get((row, column))

    def resizeColumnsToContents(self):
        pass


def test_voi_models_table_connector(module, monkeypatch):
    """The per-VOI model table's parameter connector over PythonQt-like stand-ins of the Qt classes."""
    qt = types.SimpleNamespace(QTableWidget=_QTableWidget, QTableWidgetItem=_QTableWidgetItem, QComboBox=_QComboBox,
                               Qt=types.SimpleNamespace(ItemIsEnabled=32, ItemIsSelectable=1))
    monkeypatch.setattr(module, "qt", qt)
    connector_class = module.VoiModelsTableToStrConnector
    table = _QTableWidget(module.VOI_MODELS_TABLE)
    assert connector_class.create(_QTableWidget("fitsTableWidget"), str) is None  # only that table
    assert connector_class.create(table, int) is None
    connector = connector_class.create(table, str)
    assert connector.widget() is table and table.headers == [module.VOI_COLUMN, "Model"]

    changes = []
    connector.onChanged(lambda: changes.append(connector.read()))
    connector.write(module.formatVoiModels({"Liver": "trapezoid", "Kidney_L": "auto"}))
    assert changes == []  # writing the parameter is not a change by the user
    assert table.rowCount == 2 and [table.item(r, 0).text() for r in range(2)] == ["Liver", "Kidney_L"]
    combos = [table.cellWidget(r, 1) for r in range(2)]
    assert [c.items for c in combos] == [[c for c, _ in module.MODEL_CHOICES]] * 2
    assert [c.currentText for c in combos] == ["trapezoid", "auto"]
    assert module.parseVoiModels(connector.read()) == {"Liver": "trapezoid", "Kidney_L": "auto"}

    combos[1].setCurrentIndex(combos[1].findText("bi"))  # the user picks a model
    assert len(changes) == 1 and module.modelsPerVoiFromText(changes[0]) == {"Liver": ("trapezoid",),
                                                                            "Kidney_L": ("bi_exponential",)}
    # Same VOIs: the rows stay, the choices follow the parameter.
    connector.write(module.formatVoiModels({"Liver": "auto", "Kidney_L": "bi"}))
    assert table.cellWidget(0, 1) is combos[0] and combos[0].currentText == "auto" and len(changes) == 1
    # Other VOIs: new rows, still connected.
    connector.write(module.formatVoiModels({"Spleen": "mono"}))
    assert table.rowCount == 1 and table.item(0, 0).text() == "Spleen" and table.item(1, 0) is None
    spleen = table.cellWidget(0, 1)
    assert spleen.currentText == "mono" and len(changes) == 1
    spleen.setCurrentIndex(spleen.findText("tri"))
    assert module.parseVoiModels(changes[-1]) == {"Spleen": "tri"}
    # A bad value shows no rows; disconnected, the user's changes are not reported.
    connector.write("not json")
    assert table.rowCount == 0 and connector.read() == ""
    connector.write(module.formatVoiModels({"Liver": "auto"}))
    connector.onChanged(None)
    table.cellWidget(0, 1).setCurrentIndex(1)
    assert len(changes) == 2
