"""The original middle-layer's asset descriptions (its ``ServiceDescription`` JSON), read as assets.

A provider moving over keeps its ``.json`` files in the catalogue unchanged. Each maps onto an
:class:`~core.assets.Asset` field by field; what the original did not describe gets the defaults below
(stated in the README, and printed in full by ``wml assets convert``):

| original                                         | asset                                              |
|--------------------------------------------------|----------------------------------------------------|
| ``service_id``                                   | ``id`` and ``name``                                |
| ``inputs[]`` type 1 (environment)                | ``kind: env`` slot accepting any key not reserved  |
| ``inputs[]`` type 2 (data)                       | ``kind: file``, at ``mount_path/<resource_name>``  |
| ``inputs[]`` type 3 (data_zip)                   | ``kind: archive``, extracted at ``mount_path``     |
| ``outputs[]``                                    | output ``<resource_name>`` in the output directory |
| ``workflow_resource.worker_image``               | ``image``                                          |
| ``workflow_resource.worker_image_command/args``  | ``command`` / ``args``                             |
| ``workflow_resource.worker_image_output_directory`` | ``outputDirectory``                             |
| ``workflow_resource.gpu``                        | ``resources.gpu`` 1 or 0                           |

Slot names are the resource names with every character but letters, digits and ``_`` made ``_``
(``entrypoint.sh`` -> slot ``entrypoint_sh``, still placed as ``entrypoint.sh``). One extension the
original's models ignore: an input may say ``"replaces_image_file": true`` (see ``replacesImageFile``).
"""

from __future__ import annotations

import re
from enum import IntEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from core.assets import Asset
from sidecar.dotenv import ANY_KEY

# What the original did not describe. Its workers ran until they ended, images were large (CARLA), and
# nothing limited CPU or memory: generous limits, changed by writing the asset as YAML.
DEFAULT_CPU = "1"
DEFAULT_MEMORY = "2Gi"
DEFAULT_TIMEOUTS = {"queue": 24 * 3600, "start": 1800, "run": 24 * 3600}
ENV_MAX_SIZE = "64KiB"


class ResourceType(IntEnum):
    ENVIRONMENT = 1
    DATA = 2
    DATA_ZIP = 3


class _Original(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputResource(_Original):
    resource_name: str
    type: ResourceType
    description: str = ""
    mount_path: str | None = None
    replaces_image_file: bool = False  # ours: the original's models ignore it


class OutputResource(_Original):
    resource_name: str
    type: ResourceType = ResourceType.DATA
    description: str = ""


class WorkflowResource(_Original):
    worker_image: str
    worker_image_output_directory: str | None = None
    worker_image_command: list[str] | None = None
    worker_image_args: list[str] | None = None
    gpu: bool = False


class ServiceDescription(_Original):
    service_id: str
    inputs: list[InputResource] = []
    outputs: list[OutputResource] = []
    workflow_resource: WorkflowResource


def slot_name(resource_name: str) -> str:
    """A slot name for an original resource name (letters, digits and ``_``, starting with a letter)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", resource_name)
    if not name[:1].isalpha():
        name = f"r{name}"
    return name[:63]


def asset_spec(description: ServiceDescription) -> dict[str, Any]:
    """The asset, as the mapping an asset YAML file would hold (every field explicit)."""
    work = description.workflow_resource
    inputs = [_input(resource) for resource in description.inputs]
    outputs = [
        {"name": slot_name(o.resource_name), "description": o.description, "path": o.resource_name}
        for o in description.outputs
    ]
    return {
        "id": description.service_id,
        "version": "1",
        "name": description.service_id,
        "description": "Converted from the original middle-layer's service description.",
        "image": work.worker_image,
        "command": work.worker_image_command,
        "args": work.worker_image_args,
        "resources": {"cpu": DEFAULT_CPU, "memory": DEFAULT_MEMORY, "gpu": 1 if work.gpu else 0},
        "inputs": inputs,
        "outputs": outputs,
        "outputDirectory": work.worker_image_output_directory,
        "timeouts": dict(DEFAULT_TIMEOUTS),
    }


def _input(resource: InputResource) -> dict[str, Any]:
    slot: dict[str, Any] = {
        "name": slot_name(resource.resource_name),
        "description": resource.description,
        "required": True,
    }
    if resource.type == ResourceType.ENVIRONMENT:
        # The original merged an env file into the environment (a ConfigMap): its mount_path meant nothing.
        env = {"kind": "env", "path": f"{slot['name']}.env", "maxSize": ENV_MAX_SIZE, "keys": [ANY_KEY]}
        return {**slot, **env}
    kind = "file" if resource.type == ResourceType.DATA else "archive"
    slot.update(kind=kind, path=resource.resource_name if kind == "file" else slot["name"])
    if resource.mount_path is not None:
        slot["mountPath"] = resource.mount_path
    if resource.replaces_image_file:
        slot["replacesImageFile"] = True
    return slot


def asset_from_original(raw: Any) -> Asset:
    """Validate an original ``ServiceDescription`` document and map it onto an asset (pydantic's
    ValidationError when either step fails)."""
    return Asset.model_validate(asset_spec(ServiceDescription.model_validate(raw)))
