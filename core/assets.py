"""Workflow assets: the provider's definition of a sellable workload, and the catalogue that loads them.

An asset file is YAML validated into :class:`Asset`, or the original middle-layer's JSON service description
(:mod:`core.original_assets`); an invalid file stops start-up with an error naming the file and the field.
Jobs keep a frozen copy (``Asset.model_dump``) of the version they ran.
"""

from __future__ import annotations

import enum
import json
import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from core.units import parse_cpu, parse_size
from sidecar.dotenv import is_reserved_env_key

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,62}$"
ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
ENV_KEY_PATTERN = r"^([A-Za-z_][A-Za-z0-9_]{0,127}|\*)$"  # "*": any key that is not reserved
# Where an absolute container path (an input's ``mountPath``, the ``outputDirectory``) may not lead: the
# system's own directories (a mount there hides what the runtime needs), the worker's /tmp and ours.
SYSTEM_DIRS = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run", "/sbin",
    "/sys", "/tmp", "/usr", "/var/run", "/var/lock", "/wml",  # noqa: S108
)  # fmt: skip
CONTAINER_PATH_PATTERN = re.compile(r"/[A-Za-z0-9._@+-]+(/[A-Za-z0-9._@+-]+)*")
MAX_CONTAINER_PATH = 255
MAX_COMMANDS = 16  # commands one job may run in order (TES executors), whatever an asset allows


def container_path(value: object) -> str:
    """An absolute path inside the worker, normalised (no trailing ``/``); ValueError says what is wrong.

    Plain characters only (they end up in mount options and command lines), no ``.``/``..`` parts, not
    ``/`` itself and nowhere in or above a system directory (:data:`SYSTEM_DIRS`).
    """
    if not isinstance(value, str):
        raise ValueError("must be a string")
    path = value.rstrip("/") if len(value) > 1 else value
    if not path.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute path")
    if path == "/":
        raise ValueError("'/' cannot be mounted over")
    if len(path) > MAX_CONTAINER_PATH or not CONTAINER_PATH_PATTERN.fullmatch(path):
        raise ValueError(
            f"{value!r}: only letters, digits and . _ @ + - between single slashes, at most "
            f"{MAX_CONTAINER_PATH} characters"
        )
    if any(part in {".", ".."} for part in path.split("/")):
        raise ValueError(f"{value!r}: '.' and '..' are not allowed")
    for system in SYSTEM_DIRS:
        if path == system or path.startswith(system + "/") or system.startswith(path + "/"):
            raise ValueError(f"{value!r} is in or above the system directory {system}")
    return path


ContainerPath = Annotated[str, BeforeValidator(container_path)]
Size = Annotated[int, BeforeValidator(parse_size)]
Cpu = Annotated[float, BeforeValidator(parse_cpu)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ParameterType(enum.StrEnum):
    INTEGER = "integer"
    NUMBER = "number"
    STRING = "string"
    BOOLEAN = "boolean"


class Parameter(_Model):
    name: str = Field(pattern=NAME_PATTERN)
    type: ParameterType
    description: str = ""
    default: int | float | str | bool | None = None
    min: float | None = None
    max: float | None = None
    choices: list[str | int | float] | None = None
    required: bool = False


class InputSlotKind(enum.StrEnum):
    FILE = "file"
    ARCHIVE = "archive"
    ENV = "env"


class InputSlot(_Model):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    kind: InputSlotKind = InputSlotKind.FILE
    path: str | None = None  # relative to the inputs directory; defaults to the slot name
    # Where the worker sees the input instead of under the inputs directory (absolute): a file at
    # ``mountPath/<path>``, an archive extracted at ``mountPath``. Not for env slots.
    mount_path: ContainerPath | None = Field(default=None, alias="mountPath")
    # The input may land on a path the asset's command or args name (replacing the image's file there).
    replaces_image_file: bool = Field(default=False, alias="replacesImageFile")
    required: bool = True
    max_size: Size | None = Field(default=None, alias="maxSize")
    # env slots: the keys an env file may set (any other key is refused); required in an asset file.
    keys: list[Annotated[str, Field(pattern=ENV_KEY_PATTERN)]] | None = None

    @property
    def target(self) -> str:
        return self.path or self.name

    @property
    def worker_path(self) -> str | None:
        """The absolute path the worker sees this input at, when the asset places it (``mountPath``)."""
        if self.mount_path is None:
            return None
        return self.mount_path if self.kind == InputSlotKind.ARCHIVE else f"{self.mount_path}/{self.target}"

    @model_validator(mode="after")
    def _keys_fit_the_kind(self) -> InputSlot:
        if self.mount_path is not None and self.kind == InputSlotKind.ENV:
            raise ValueError(f"slot {self.name!r}: env slots are merged into the environment: no mountPath")
        if self.keys is None:
            return self
        if self.kind != InputSlotKind.ENV:
            raise ValueError(f"slot {self.name!r}: only env slots take keys")
        reserved = sorted(k for k in self.keys if is_reserved_env_key(k))
        if reserved:
            raise ValueError(
                f"slot {self.name!r}: keys {reserved} configure the runtime (WML_*, LD_*, PYTHON*, PATH, "
                "BASH_ENV, ...) and cannot come from an env file"
            )
        return self


class OutputSlot(_Model):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    path: str  # relative to the outputs directory (the asset's outputDirectory, when it sets one)
    required: bool = True


class Resources(_Model):
    cpu: Cpu = 1.0
    memory: Size = 512 * 1024 * 1024
    gpu: int = Field(default=0, ge=0)
    gpu_type: str | None = Field(default=None, alias="gpuType")


class Timeouts(_Model):
    queue: int = Field(default=24 * 3600, gt=0)  # seconds a job may wait for capacity
    start: int = Field(default=600, gt=0)  # seconds from submission until the worker runs
    run: int = Field(default=3600, gt=0)  # seconds the worker may run


class LocalSpec(_Model):
    command: list[str] = Field(min_length=1)
    # The sandboxed local worker gets a network namespace of its own (loopback only) unless this is set.
    network: bool = False


class Asset(_Model):
    id: str = Field(pattern=ID_PATTERN)
    version: str = "1"
    name: str
    description: str = ""
    image: str
    command: list[str] | None = None
    args: list[str] | None = None
    env: dict[str, str] = {}
    parameters: list[Parameter] = []
    resources: Resources = Resources()
    inputs: list[InputSlot] = []
    outputs: list[OutputSlot] = []
    # Where the worker writes its outputs (absolute), instead of the default outputs directory.
    output_directory: ContainerPath | None = Field(default=None, alias="outputDirectory")
    timeouts: Timeouts = Timeouts()
    local: LocalSpec | None = None
    # Off by default, the provider decides what runs: whether a job may bring its own command instead of
    # the image's (a TES executor's ``command``), and how many commands one job may run in order.
    consumer_commands: bool = Field(default=False, alias="consumerCommands")
    max_commands: int = Field(default=1, ge=1, le=MAX_COMMANDS, alias="maxCommands")

    @model_validator(mode="after")
    def _unique_names(self) -> Asset:
        for what, names in (
            ("parameters", [p.name for p in self.parameters]),
            ("inputs", [s.name for s in self.inputs]),
            ("outputs", [s.name for s in self.outputs]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{what}: duplicate names {dupes}")
        paths = [(s.name, s.target) for s in self.inputs] + [(o.name, o.path) for o in self.outputs]
        for name, path in paths:
            if not _is_safe_relative(path):
                raise ValueError(f"slot {name!r}: path must be relative and stay inside its directory")
        # An env file never overrides what the provider set or what was validated as a parameter.
        taken = set(self.env) | {p.name for p in self.parameters}
        for slot in self.inputs:
            clash = sorted(taken.intersection(slot.keys or ()))
            if clash:
                raise ValueError(f"slot {slot.name!r}: keys {clash} are the asset's env or parameters")
        self._check_container_paths()
        return self

    def _check_container_paths(self) -> None:
        """Placed inputs and the output directory never overlap, and an input lands on a path the
        command names (the image's own script, say) only where the slot allows it."""
        placed = [(s, s.worker_path) for s in self.inputs if s.worker_path is not None]
        for slot, path in placed:
            container_path(path)  # a file's full path: still plain, still outside the system
            if self.output_directory and _overlaps(path, self.output_directory):
                raise ValueError(f"slot {slot.name!r}: {path} overlaps the outputDirectory")
            for other, other_path in placed:
                if other is not slot and _overlaps(path, other_path):
                    if slot.kind == other.kind == InputSlotKind.FILE and path != other_path:
                        continue  # two files side by side in one directory
                    raise ValueError(f"slots {slot.name!r} and {other.name!r} overlap at {path}")
            if not slot.replaces_image_file:
                named = sorted(word for word in self.command_paths() if _overlaps(word, path, strict=True))
                if named:
                    raise ValueError(
                        f"slot {slot.name!r}: {path} would replace {named[0]}, which the command or args "
                        "name; set replacesImageFile: true on the slot to allow it"
                    )

    def command_paths(self) -> set[str]:
        """The absolute paths the asset's command and args name (words of them starting with /)."""
        words = [w for part in [*(self.command or ()), *(self.args or ())] for w in part.split()]
        return {w.rstrip("/;") for w in words if w.startswith("/")}

    @property
    def command_line(self) -> tuple[str, ...]:
        """The asset's command and args as one argv (empty: the image's entrypoint)."""
        return (*(self.command or ()), *(self.args or ()))

    def input_slot(self, name: str) -> InputSlot | None:
        return next((s for s in self.inputs if s.name == name), None)

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)

    def frozen(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def _overlaps(a: str, b: str, *, strict: bool = False) -> bool:
    """One path is the other or lies under it (``strict``: ``a`` is ``b`` or lies under it)."""
    if a == b or a.startswith(b + "/"):
        return True
    return not strict and b.startswith(a + "/")


def _is_safe_relative(path: str) -> bool:
    if not path or "\x00" in path or path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", path):
        return False
    return ".." not in Path(path).parts


class CatalogError(Exception):
    """An asset file is invalid; the message names the file and the field."""


def load_asset_file(path: Path) -> Asset:
    """One asset file: our YAML, or (``.json``) the original middle-layer's service description."""
    if path.suffix.lower() == ".json":
        return _load_original(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise CatalogError(f"{path}: cannot read asset file: {e}") from None
    if not isinstance(raw, dict):
        raise CatalogError(f"{path}: an asset file must be a YAML mapping")
    local = raw.get("local")
    if isinstance(local, dict) and isinstance(local.get("command"), list):
        # Relative script paths in a local command are relative to the asset file, so the catalogue
        # works from any directory the server is started in.
        local["command"] = [_resolve_local(path.parent, str(part)) for part in local["command"]]
    try:
        asset = Asset.model_validate(raw)
    except ValidationError as e:
        raise CatalogError(f"{path}: invalid asset: {_problems(e)}") from None
    for slot in asset.inputs:
        if slot.kind == InputSlotKind.ENV and slot.keys is None:
            # (Jobs' frozen copies of older assets may lack keys: they then accept none.)
            raise CatalogError(
                f"{path}: invalid asset: field 'inputs.{slot.name}.keys': an env slot must list the keys "
                "it accepts"
            )
    return asset


def _load_original(path: Path) -> Asset:
    from core.original_assets import asset_from_original  # (it builds on this module)

    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CatalogError(f"{path}: cannot read asset file: {e}") from None
    if not isinstance(raw, dict):
        raise CatalogError(f"{path}: a service description must be a JSON object")
    try:
        return asset_from_original(raw)
    except ValidationError as e:
        raise CatalogError(f"{path}: invalid service description: {_problems(e)}") from None


def _problems(e: ValidationError) -> str:
    return "; ".join(
        f"field '{'.'.join(str(p) for p in err['loc']) or '<root>'}': {err['msg']}" for err in e.errors()
    )


def asset_yaml(asset: Asset, source: str | None = None) -> str:
    """``asset`` as an asset YAML file with every field explicit (defaults included; sizes in bytes),
    which loads back to the same asset (``wml assets convert``)."""
    header = f"# Converted from {source} by `wml assets convert`: every field explicit.\n" if source else ""
    data = asset.model_dump(mode="json", by_alias=True, exclude_none=True)
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def _resolve_local(base: Path, part: str) -> str:
    if part.startswith(("./", "../")):
        return str((base / part).resolve())
    return part


def load_catalog(directory: Path) -> list[Asset]:
    """Every ``*.yaml``/``*.yml`` asset and ``*.json`` service description in ``directory``; ids must be
    unique."""
    if not directory.is_dir():
        raise CatalogError(f"{directory}: asset catalogue directory does not exist")
    assets: list[Asset] = []
    seen: dict[str, Path] = {}
    for file in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml"), *directory.glob("*.json")]):
        asset = load_asset_file(file)
        if asset.id in seen:
            raise CatalogError(
                f"{file}: field 'id': asset id {asset.id!r} already defined in {seen[asset.id]}"
            )
        seen[asset.id] = file
        assets.append(asset)
    return assets
