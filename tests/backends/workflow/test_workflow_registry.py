"""Choosing a workflow backend by URL scheme."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.storage.file import FileStorageBackend
from backends.workflow.base import WorkflowBackend
from backends.workflow.host.local.backend import LocalWorkflowBackend
from backends.workflow.registry import BACKENDS, WorkflowConfigurationError, create_workflow_backend


@pytest.fixture
def storage(tmp_path: Path) -> FileStorageBackend:
    return FileStorageBackend(tmp_path / "files")


def test_local_scheme_builds_the_local_backend(storage, tmp_path) -> None:
    backend = create_workflow_backend("local://", storage=storage, work_dir=tmp_path / "jobs")

    assert isinstance(backend, LocalWorkflowBackend)
    assert isinstance(backend, WorkflowBackend)


def test_local_options_come_from_the_query(storage, tmp_path) -> None:
    backend = create_workflow_backend(
        "local://?poll_interval=0.5&log_tail_lines=10&kill_grace=2", storage=storage, work_dir=tmp_path
    )
    assert isinstance(backend, LocalWorkflowBackend)


@pytest.mark.parametrize(
    "url", ["local://host", "local:///some/path", "local://?colour=red", "local://?kill_grace=x"]
)
def test_invalid_local_urls_are_refused(storage, tmp_path, url) -> None:
    with pytest.raises(WorkflowConfigurationError, match="invalid local workflow URL"):
        create_workflow_backend(url, storage=storage, work_dir=tmp_path)


def test_a_listed_backend_whose_module_is_missing_says_it_is_not_available(
    storage, tmp_path, monkeypatch
) -> None:
    # kubernetes:// and container:// are listed before their modules exist; this is what they answer.
    monkeypatch.setitem(BACKENDS, "planned", "backends.workflow.planned:PlannedWorkflowBackend")

    with pytest.raises(WorkflowConfigurationError, match="planned workflow backend is not available"):
        create_workflow_backend("planned://x", storage=storage, work_dir=tmp_path)


def test_kubernetes_and_container_are_listed() -> None:
    assert {"local", "kubernetes", "container"} <= set(BACKENDS)


@pytest.mark.parametrize("url", ["slurm://cluster", "no-scheme"])
def test_unknown_schemes_list_the_known_ones(storage, tmp_path, url) -> None:
    with pytest.raises(WorkflowConfigurationError, match="container://, kubernetes://, local://"):
        create_workflow_backend(url, storage=storage, work_dir=tmp_path)
