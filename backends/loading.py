"""Import a backend class named ``"module:Class"`` only when a URL asks for it.

Shared by the storage and workflow registries: an implementation's optional dependencies (aiobotocore,
kubernetes_asyncio) are needed only by deployments that use it, and a missing one becomes the registry's
own configuration error naming the package, never an ImportError traceback at start.
"""

from __future__ import annotations

import importlib
from typing import Any


def load_backend_class(kind: str, scheme: str, target: str, error: type[ValueError]) -> Any:
    """The class ``target`` names; ``error`` (the registry's configuration error) when it cannot load.

    ``kind`` ("storage", "workflow") only words the message.
    """
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name + ".").startswith(e.name + "."):
            raise error(f"the {scheme} {kind} backend is not available in this build") from None
        raise error(
            f"the {scheme} {kind} backend needs the Python package {e.name!r}, which is not installed"
        ) from None
    backend_class = getattr(module, class_name, None)
    if backend_class is None:
        raise error(f"the {scheme} {kind} backend is not available in this build")
    return backend_class
