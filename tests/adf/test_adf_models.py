"""Every ADF JSON file under infra/adf/ loads into Microsoft's Data Factory models, with nothing left over.

azure-mgmt-datafactory is generated from the Data Factory REST specification. A property the
specification does not know (a typo, a wrong nesting level) does not fail deserialization: it lands
in ``additional_properties``, or, inside a flattened object such as ``typeProperties``, is silently
dropped. So a file passes only if no model anywhere in the tree has additional properties, if
serializing the model again gives back every key of the file, and if every property meets its
model's ``_validation`` rules (required, patterns, bounds), checked with msrest's validator as
``Model.validate()`` did before the 9.x models dropped it. Pinned at 9.3.0: 10.x models are plain
dicts without ``additional_properties``, so they cannot tell a typo.
New files are picked up by folder: pipeline/, dataset/, linkedService/, trigger/, dataflow/.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from azure.mgmt.datafactory import models
from msrest.exceptions import ValidationError
from msrest.serialization import Serializer

ROOT = Path(__file__).resolve().parents[2]
ADF = ROOT / "infra" / "adf"
# The folder names ADF's Git integration uses, and the resource model each one holds.
MODEL_BY_FOLDER: dict[str, Any] = {
    "pipeline": models.PipelineResource,
    "dataset": models.DatasetResource,
    "linkedService": models.LinkedServiceResource,
    "trigger": models.TriggerResource,
    "dataflow": models.DataFlowResource,
}
FILES = sorted(ADF.rglob("*.json"))


def is_model(node: Any) -> bool:
    return hasattr(node, "_attribute_map") and hasattr(node, "additional_properties")


def problems(node: Any, where: str = "$") -> list[str]:
    """Every unknown property and every broken validation rule, anywhere in the model tree."""
    found: list[str] = []
    if is_model(node):
        found += [f"{where}.{key}: not in the Data Factory specification" for key in node.additional_properties or {}]
        rules = getattr(node, "_validation", {})
        for attribute in node._attribute_map:
            if attribute == "additional_properties":
                continue
            value = getattr(node, attribute, None)
            try:
                Serializer.validate(value, f"{where}.{attribute}", **rules.get(attribute, {}))
            except ValidationError as error:
                found.append(str(error))
            found += problems(value, f"{where}.{attribute}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            found += problems(item, f"{where}[{index}]")
    elif isinstance(node, dict):
        for key, value in node.items():
            found += problems(value, f"{where}.{key}")
    return found


def dropped(given: Any, kept: Any, where: str = "$") -> list[str]:
    """Keys of the file that the model did not keep (compared with the model serialized again)."""
    found: list[str] = []
    if isinstance(given, dict) and isinstance(kept, dict):
        for key, value in given.items():
            if key not in kept:
                found.append(f"{where}.{key}: dropped by the Data Factory model")
            else:
                found += dropped(value, kept[key], f"{where}.{key}")
    elif isinstance(given, list) and isinstance(kept, list):
        for index, (item, kept_item) in enumerate(zip(given, kept, strict=False)):
            found += dropped(item, kept_item, f"{where}[{index}]")
    return found


def check(document: dict[str, Any], model_type: Any) -> list[str]:
    model = model_type.deserialize(document)
    return problems(model) + dropped(document, model.serialize(keep_readonly=True))


def load(path: Path) -> Any:
    folder = path.relative_to(ADF).parts[0]
    assert folder in MODEL_BY_FOLDER, f"{path.relative_to(ROOT)}: unknown ADF folder {folder!r}"
    return MODEL_BY_FOLDER[folder].deserialize(json.loads(path.read_text(encoding="utf-8")))


def test_there_are_adf_files_to_check() -> None:
    """The sample pipeline, its datasets and linked services are all found."""
    folders = {path.relative_to(ADF).parts[0] for path in FILES}
    assert {"pipeline", "dataset", "linkedService"} <= folders


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ADF)) for p in FILES])
def test_adf_file_loads_into_its_data_factory_model_with_nothing_unknown(path: Path) -> None:
    """Deserialized into its azure-mgmt-datafactory model: no additional_properties, no rule broken."""
    document = json.loads(path.read_text(encoding="utf-8"))
    found = check(document, MODEL_BY_FOLDER[path.relative_to(ADF).parts[0]])
    assert not found, f"{path.relative_to(ROOT)}: {found}"
    assert load(path).name == path.stem, "the file name is the resource name, as in ADF's Git layout"


def web_pipeline(type_properties: dict[str, Any]) -> dict[str, Any]:
    activity = {"name": "web", "type": "WebActivity", "typeProperties": type_properties}
    return {"name": "p", "properties": {"activities": [activity]}}


def test_a_misspelt_property_is_caught() -> None:
    """The check can fail: a typo in a Web activity's typeProperties lands in additional_properties."""
    pipeline = web_pipeline({"method": "GET", "url": "https://example.invalid/", "disableCertValidaton": True})
    found = check(pipeline, models.PipelineResource)
    where = "$.properties.activities[0].typeProperties.disableCertValidaton"
    assert found == [f"{where}: dropped by the Data Factory model"]


def test_an_unknown_top_level_property_is_caught() -> None:
    """The check can fail: an unknown activity property lands in additional_properties."""
    pipeline = web_pipeline({"method": "GET", "url": "https://example.invalid/"})
    pipeline["properties"]["activities"][0]["secureOuput"] = True
    found = check(pipeline, models.PipelineResource)
    assert "$.activities[0].secureOuput: not in the Data Factory specification" in found


def test_a_missing_required_property_is_caught() -> None:
    """The check can fail: a Web activity without its required url breaks a validation rule."""
    found = check(web_pipeline({"method": "GET"}), models.PipelineResource)
    assert any("url" in problem for problem in found), found
