"""Typed, validated job configs: YAML + dotted ``key=value`` overrides → pydantic models.

Every job config derives from :class:`JobConfig` (``output_dir``, ``seed``, tracking). A bad key or value raises
:class:`ConfigError` with one line naming the file, the dotted key and the problem — before any model is built.
"""

from __future__ import annotations

import collections.abc
import difflib
import hashlib
import json
import typing
from pathlib import Path
from typing import Annotated, Any, Iterable, Mapping, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from vipo.storage import resolve_output_path

__all__ = [
    "Config",
    "ConfigError",
    "ExistingPath",
    "JobConfig",
    "RayConfig",
    "StorageConfig",
    "TrackingConfig",
    "apply_overrides",
    "config_hash",
    "dump_config",
    "load_config",
    "validate_config",
]


class ConfigError(ValueError):
    """Config problems, one line each: ``<file>: <dotted.key>: <problem>``."""


class Config(BaseModel):
    """Base of every config node: unknown keys are errors, values are re-validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def _must_exist(path: Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"path does not exist: {path}")
    return path.resolve()


ExistingPath = Annotated[Path, AfterValidator(_must_exist)]
"""A path that must exist when the config is loaded (resolved to absolute)."""


class RayConfig(Config):
    """Where Ray runs. ``address=None`` starts a local Ray with the machine's CPUs (or ``RAY_ADDRESS``)."""

    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)
    num_gpus: float | None = Field(default=None, ge=0)


class TrackingConfig(Config):
    """MLflow tracking. ``tracking_uri=None`` means ``MLFLOW_TRACKING_URI`` or sqlite under ``output_dir``."""

    tracking_uri: str | None = None
    experiment: str = "vipo"
    run_name: str | None = None
    enabled: bool = True
    parent_run_id: str | None = Field(default=None, description="Make the run a child of this MLflow run "
                                      "(``vipo tune`` sets it for its trials).")
    system_metrics: bool = Field(default=True, description="MLflow system metrics (CPU/GPU use, memory) on "
                                 "training and generation runs.")
    system_metrics_interval_s: float = Field(default=10.0, gt=0)


class StorageConfig(Config):
    """Where relative output paths resolve: ``root``, else ``$VIPO_STORAGE_ROOT``, else the working directory."""

    root: Path | None = None


class JobConfig(Config):
    """Fields every job has. A relative ``output_dir`` resolves against the storage root (:class:`StorageConfig`);
    one inside a Ray session dir (a ``ray job submit`` working-dir copy) is an error."""

    storage: StorageConfig = StorageConfig()  # before output_dir: its validator reads the root
    output_dir: Path
    seed: int = Field(default=0, ge=0)
    ray: RayConfig = RayConfig()
    tracking: TrackingConfig = TrackingConfig()

    @field_validator("output_dir")
    @classmethod
    def _in_storage(cls, path: Path, info: ValidationInfo) -> Path:
        storage = info.data.get("storage")
        return resolve_output_path(path, storage.root if storage is not None else None)


def _parse_value(text: str) -> Any:
    # YAML scalars give ints, floats, bools, null and inline lists/dicts the way users expect on a command line.
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Apply ``a.b.c=value`` overrides to a nested dict (in place) and return it."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (dotted keys for nested values)")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node: Any = data
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                # A numeric part indexes into a list (``rounds.0.num_samples=4``).
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {key}: {part!r} is not an index of a {len(node)}-item list")
                index: Any = int(part)
            elif isinstance(node, dict):
                index = part
                if not last:
                    node.setdefault(part, {})
            else:
                raise ConfigError(f"override {key}: {parts[depth - 1]!r} is not a mapping or list")
            if last:
                node[index] = _parse_value(text)
            else:
                node = node[index]
    return data


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config classes an annotation can hold (through Optional, unions, lists, dicts and Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]


def _is_tag(model: type[BaseModel], part: str) -> bool:
    """Whether pydantic put ``part`` in an error location to name a union member (its class or discriminator)."""
    return part == model.__name__ or any(part in typing.get_args(f.annotation) for f in model.model_fields.values())


def _is_mapping(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (dict, Mapping, collections.abc.Mapping):
        return True
    return any(_is_mapping(arg) for arg in typing.get_args(annotation))


def _walk(cls: type[BaseModel], loc: tuple) -> tuple[tuple, set[str]]:
    """Follow ``loc`` through the schema: the path as the user wrote it (the union tags pydantic inserts for
    discriminated unions dropped) and the keys valid beside its last part."""
    candidates, path, dict_key_next, valid = [cls], [], False, set()
    for part in loc:
        valid = {name for model in candidates for name in model.model_fields}
        if dict_key_next or not isinstance(part, str):
            dict_key_next = False
            path.append(part)  # a dict key or a list index
            continue
        fields = [m.model_fields[part] for m in candidates if part in m.model_fields]
        tagged = [m for m in candidates if _is_tag(m, part)]
        if fields:
            candidates = [model for field in fields for model in _models_in(field.annotation)]
            dict_key_next = any(_is_mapping(field.annotation) for field in fields)
            path.append(part)
        elif tagged:
            candidates = tagged
        else:
            path.append(part)  # the unknown key an error is about
    return tuple(path), valid


def _format_one(source: str, cls: type[BaseModel], error: Mapping[str, Any]) -> str:
    loc, valid = _walk(cls, tuple(error["loc"]))
    key = ".".join(str(p) for p in loc)
    where = f"{source}: {key}: " if key else f"{source}: "  # a check of the whole config has no key
    if error["type"] == "value_error":  # a validator's own message, without pydantic's "Value error, " prefix
        return f"{where}{error.get('ctx', {}).get('error', error['msg'])}"
    if error["type"] != "extra_forbidden":
        return f"{where}{error['msg']}"
    close = difflib.get_close_matches(str(loc[-1]), sorted(valid), n=1, cutoff=0.6)
    hint = f"; did you mean {'.'.join(str(p) for p in (*loc[:-1], close[0]))}?" if close else ""
    return f"{where}unknown key{hint}"


def _format_error(source: str, cls: type[BaseModel], err: ValidationError) -> str:
    """Every problem, one line each (a user fixes them all in one edit)."""
    return "\n".join(_format_one(source, cls, error) for error in err.errors())


T = TypeVar("T", bound=BaseModel)


def validate_config(cls: type[T], data: dict, source: str = "<config>") -> T:
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(source, cls, err)) from None


def load_config(cls: type[T], path: str | Path | None, overrides: Iterable[str] = ()) -> T:
    """Load a YAML file (or nothing) plus overrides into ``cls``; raise :class:`ConfigError` on any problem."""
    data: dict = {}
    source = "<overrides>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"{source}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{source}:{where} invalid YAML") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: top level must be a mapping")
    apply_overrides(data, overrides)
    return validate_config(cls, data, source)


def dump_config(config: BaseModel) -> dict:
    """The resolved config as plain JSON-able data (paths as strings)."""
    return config.model_dump(mode="json")


def config_hash(config: BaseModel) -> str:
    """A stable short hash of the resolved config (sorted-key JSON, sha256, 16 hex digits)."""
    text = json.dumps(dump_config(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
