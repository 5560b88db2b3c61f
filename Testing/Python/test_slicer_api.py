"""The Slicer API as Slicer 5.8 and 5.10 have it (issue #16), checked without Slicer.

- On slicer-core's real MRML: nodes made by the scene bridge have a storage node attached
  (``AddDefaultStorageNode``; ``CreateDefaultStorageNode`` returns one and attaches nothing), names are made
  unique with ``GenerateUniqueName`` (``GetUniqueNameByString`` is deprecated), and the study's subject-hierarchy
  item carries the attribute Slicer's DICOM plugins read (``DICOM.StudyInstanceUID``).
- In the module's source (it needs the Slicer application to run): the parameter node is connected with
  ``connectParametersToGui``, whose tag ``disconnectGui`` needs (``connectGui`` returns None in 5.8, see
  Base/Python/slicer/parameterNodeWrapper/wrapper.py at v5.8.1); the per-VOI model table's connector takes over
  the editors of a table that already has rows; no slot returns after ``slicer.util.tryWithErrorDisplay`` (which
  shows the error and raises it again); the headless script keeps the DICOM database open for the run and always
  exits Slicer.
"""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
MODULE_PY = ROOT / "LuDosimetry" / "LuDosimetry.py"
CONNECTORS_PY = ROOT / "LuDosimetry" / "LuDosimetryWidgets" / "connectors.py"
SCRIPT_PY = ROOT / "LuDosimetry" / "Scripts" / "run_study.py"
NODES_PY = ROOT / "LuDosimetryLib" / "mrml" / "nodes.py"


def _calls(tree: ast.AST, attribute: str):
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attribute]


def _function(tree: ast.AST, name: str) -> ast.FunctionDef:
    return next(node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == name)


# ---------------------------------------------------------------------------------------- on slicer-core

@pytest.fixture()
def scene():
    mrml = pytest.importorskip("LuDosimetryLib.mrml")
    pytest.importorskip("slicer")
    scene = mrml.create_scene()
    yield scene
    mrml.release_scene(scene)


def _image() -> sitk.Image:
    image = sitk.GetImageFromArray(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    image.SetSpacing((2.0, 2.0, 3.0))
    return image


def test_nodes_have_their_storage_node_attached(scene):
    from LuDosimetryLib import mrml

    volume = mrml.add_volume(scene, _image(), "dose")
    segmentation = mrml.add_segmentation(scene, {"Liver": np.ones((2, 3, 4), bool)}, _image(), "VOIs")
    assert volume.GetStorageNode() is not None
    assert volume.GetStorageNode().IsA("vtkMRMLVolumeArchetypeStorageNode")
    assert segmentation.GetStorageNode() is not None
    assert segmentation.GetStorageNode().IsA("vtkMRMLSegmentationStorageNode")


def test_node_names_are_made_unique(scene):
    from LuDosimetryLib import mrml

    first, second = mrml.add_volume(scene, _image(), "SPECT"), mrml.add_volume(scene, _image(), "SPECT")
    assert first.GetName() == "SPECT"
    assert second.GetName() != "SPECT" and second.GetName().startswith("SPECT")


def test_no_deprecated_unique_name_call_in_the_bridge():
    tree = ast.parse(NODES_PY.read_text(encoding="utf-8"))
    assert not _calls(tree, "GetUniqueNameByString"), "GetUniqueNameByString is deprecated: use GenerateUniqueName"
    # CreateDefaultStorageNode's result thrown away attaches nothing (and leaks): AddDefaultStorageNode attaches.
    for call in _calls(tree, "CreateDefaultStorageNode"):
        parent = next(p for p in ast.walk(tree) if any(c is call for c in ast.iter_child_nodes(p)))
        assert not isinstance(parent, ast.Expr), f"line {call.lineno}: CreateDefaultStorageNode() result unused"


def test_study_item_carries_the_dicom_plugins_attribute(scene):
    import slicer
    from LuDosimetryLib import mrml

    item = mrml.study_item(scene, "P1", "Doe^J", "1.2.3.4", "Dosimetry")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    name = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMStudyInstanceUIDAttributeName()
    assert name == "DICOM.StudyInstanceUID"
    assert sh.GetItemAttribute(item, name) == "1.2.3.4"
    assert mrml.study_item(scene, "P1", "Doe^J", "1.2.3.4") == item  # found again, not made twice


# ---------------------------------------------------------------------------------------- module source

def test_parameter_node_is_connected_with_a_tag_disconnect_can_use():
    tree = ast.parse(MODULE_PY.read_text(encoding="utf-8"))
    assert not _calls(tree, "connectGui"), "connectGui returns None in Slicer 5.8: its connectors are never removed"
    setter = _function(tree, "setParameterNode")
    assigned = [node for node in ast.walk(setter) if isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Attribute) and t.attr == "_parameterNodeGuiTag" for t in node.targets)]
    assert any(isinstance(a.value, ast.Call) and isinstance(a.value.func, ast.Attribute)
               and a.value.func.attr == "connectParametersToGui" for a in assigned)
    # every disconnect is given that tag
    for call in _calls(tree, "disconnectGui"):
        assert isinstance(call.args[0], ast.Attribute) and call.args[0].attr == "_parameterNodeGuiTag"


def test_voi_model_connector_takes_over_the_table_editors():
    tree = ast.parse(CONNECTORS_PY.read_text(encoding="utf-8"))
    connector = next(node for node in ast.walk(tree)
                     if isinstance(node, ast.ClassDef) and node.name == "VoiModelsTableToStrConnector")
    init = _function(connector, "__init__")
    assert _calls(init, "cellWidget"), "a new connector must take the combo boxes the table already shows"


def test_no_slot_returns_after_try_with_error_display():
    for path in (MODULE_PY, CONNECTORS_PY):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert not _calls(tree, "tryWithErrorDisplay"), (
            f"{path.name}: tryWithErrorDisplay shows the error and raises it again; catch and end the slot instead")


def test_headless_script_keeps_the_database_open_and_always_exits():
    tree = ast.parse(SCRIPT_PY.read_text(encoding="utf-8"))
    in_slicer = _function(tree, "run_in_slicer")
    with_blocks = [node for node in ast.walk(in_slicer) if isinstance(node, ast.With)]
    assert with_blocks, "the temporary DICOM database must be a with block"
    inside = [call for block in with_blocks for call in ast.walk(block)
              if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "run"]
    assert inside, "the run must happen while the temporary DICOM database is open"
    exits = [node for node in ast.walk(tree) if isinstance(node, ast.Try)
             and any(call.func.attr == "exit" for stmt in node.finalbody for call in _calls(stmt, "exit"))]
    assert exits, "slicer.util.exit must be in a finally: any exception would leave Slicer waiting forever"
    assert "sys.modules[" not in SCRIPT_PY.read_text(encoding="utf-8")
