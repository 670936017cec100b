"""The model catalogue: `models.yaml` -> validated, frozen entries.

This is the only module that reads the YAML. Every model the app can run is declared there; wrappers
hard-code no repository ids. Validation happens at start-up, and a bad file stops the app with one
message that names the offending field instead of a traceback.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Task = Literal["chat", "image", "music", "pointcloud", "caption"]
TASKS: tuple[Task, ...] = ("chat", "image", "music", "pointcloud", "caption")
DTypeName = Literal["float32", "float16", "bfloat16"]
SettingValue = float | int | str | bool | None


class CatalogError(Exception):
    """A catalogue that cannot be used; the message names the file and the field."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Source(_Frozen):
    """Where the weights come from: exactly one of a hub repo, an installed package, or a local folder."""

    hub: str | None = Field(None, description="Hugging Face repo id, e.g. 'org/name'")
    revision: str | None = Field(None, description="pinned revision for `hub` (branch, tag or commit)")
    package: str | None = Field(None, description="an installed Python package that ships the files")
    path: str | None = Field(None, description="a local folder (or file) with the weights")
    file: str | None = Field(None, description="one file inside the source, e.g. a .gguf")

    @model_validator(mode="after")
    def _exactly_one_origin(self) -> Source:
        origins = [name for name in ("hub", "package", "path") if getattr(self, name)]
        if len(origins) != 1:
            raise ValueError(f"give exactly one of hub, package or path (got {origins or 'none'})")
        if self.revision and not self.hub:
            raise ValueError("revision only applies to a hub source")
        if self.hub and self.hub.count("/") != 1:
            raise ValueError(f"hub must look like 'org/name', got {self.hub!r}")
        return self

    def describe(self) -> str:
        if self.hub:
            return self.hub + (f"@{self.revision}" if self.revision else "")
        if self.package:
            return f"package {self.package}" + (f" ({self.file})" if self.file else "")
        return str(self.path) + (f"/{self.file}" if self.file else "")

    def local_folder(self) -> Path | None:
        """The folder holding the files for package and path sources (None for hub sources)."""
        if self.path:
            return Path(self.path).expanduser()
        if self.package:
            spec = importlib.util.find_spec(self.package)
            if spec is None or not spec.submodule_search_locations:
                return None
            return Path(next(iter(spec.submodule_search_locations)))
        return None


class DTypes(_Frozen):
    """Weights dtype per device kind: half precision on accelerators, fp32 on CPU by default."""

    cuda: DTypeName = "float16"
    mps: DTypeName = "float16"
    cpu: DTypeName = "float32"

    def for_device(self, device: str) -> DTypeName:
        kind = device.split(":")[0]
        return getattr(self, kind, "float32")


class ModelEntry(_Frozen):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    name: str = Field(min_length=1, description="short display name")
    wrapper: str = Field(description="which wrapper runs it, see modules/wrappers/__init__.py")
    prefer: tuple[str, ...] = Field(
        (), description="faster wrappers tried first, in order, where usable here; `wrapper` is the last resort"
    )
    source: Source
    dtype: DTypes = DTypes()
    license: str = Field(min_length=1)
    license_note: str | None = Field(None, description="shown prominently where the licence restricts use")
    defaults: dict[str, SettingValue] = Field(default_factory=dict)
    random_weights: bool = Field(False, description="tiny test model: the UI labels it as random weights")
    safety_checker: Literal["on", "off", "auto"] | None = Field(
        None, description="image models: run the safety checker (auto: when the app is shared); a flag overrides"
    )

    @property
    def label(self) -> str:
        return f"{self.name} [random weights, for testing]" if self.random_weights else self.name


class TaskCatalog(_Frozen):
    default: str
    fallback: str | None = Field(None, description="an offline model used when the chosen one cannot load")
    models: list[ModelEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _ids_resolve(self) -> TaskCatalog:
        ids = [entry.id for entry in self.models]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate model ids {duplicates}")
        for role in ("default", "fallback"):
            wanted = getattr(self, role)
            if wanted is not None and wanted not in ids:
                raise ValueError(f"{role} {wanted!r} is not one of the models {ids}")
        return self

    def get(self, model_id: str) -> ModelEntry:
        for entry in self.models:
            if entry.id == model_id:
                return entry
        raise KeyError(model_id)


class Catalog(_Frozen):
    tasks: dict[Task, TaskCatalog]

    def entries(self) -> list[tuple[Task, ModelEntry]]:
        return [(task, entry) for task, group in self.tasks.items() for entry in group.models]


def _field_path(location: tuple[int | str, ...], raw: dict) -> str:
    """Render a pydantic error location readably, naming models by id rather than list index."""
    parts: list[str] = []
    node: object = raw
    for key in location:
        if isinstance(key, int) and isinstance(node, list) and key < len(node) and isinstance(node[key], dict):
            parts.append(f"[{node[key].get('id', key)}]")
        else:
            parts.append(f".{key}" if parts else str(key))
        node = node[key] if isinstance(node, (dict, list)) and _has(node, key) else None
    return "".join(parts)


def _has(node: dict | list, key: int | str) -> bool:
    return key in node if isinstance(node, dict) else isinstance(key, int) and key < len(node)


def parse_catalog(raw: object, origin: str, known_wrappers: dict[str, str]) -> Catalog:
    """Validate already-parsed YAML; `known_wrappers` maps wrapper name -> the task it serves."""
    if not isinstance(raw, dict):
        raise CatalogError(f"{origin}: the top level must be a mapping with a 'tasks' key")
    try:
        catalog = Catalog.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _field_path(first["loc"], raw)
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        raise CatalogError(f"{origin}: {where}: {first['msg']}{more}") from None
    for task, entry in catalog.entries():
        for field, name in [("wrapper", entry.wrapper), *(("prefer", name) for name in entry.prefer)]:
            if name not in known_wrappers:
                raise CatalogError(
                    f"{origin}: tasks.{task}[{entry.id}].{field}: unknown wrapper {name!r}; "
                    f"known: {sorted(known_wrappers)}"
                )
            if known_wrappers[name] != task:
                raise CatalogError(
                    f"{origin}: tasks.{task}[{entry.id}].{field}: {name!r} serves the "
                    f"{known_wrappers[name]!r} task, not {task!r}"
                )
    return catalog


def load_catalog(path: str | Path, known_wrappers: dict[str, str]) -> Catalog:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the catalogue ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CatalogError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_catalog(raw, str(path), known_wrappers)
