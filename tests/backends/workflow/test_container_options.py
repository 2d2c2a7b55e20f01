"""The container backend's URL options and the engine arguments built from them (no container runs here):
docker versus podman differences, GPU devices, and the typed refusal of a GPU run on a host without GPUs."""

from __future__ import annotations

import pytest

from backends.workflow.base import Resources
from backends.workflow.host.container.backend import ContainerWorkflowBackend
from backends.workflow.host.container.cli import (
    INSTANCE_LABEL,
    MANAGED_BY,
    GpuUnavailableError,
    gpu_args,
    run_args,
    sidecar_args,
)
from backends.workflow.host.container.config import DEFAULT_ULIMITS, ContainerOptions, parse_container_url


def test_a_docker_url_sets_the_engine_its_socket_and_options() -> None:
    options = parse_container_url(
        "container://docker?host=unix:///run/x.sock&pull=missing&user=&ulimit=nofile=64:64&gpus=docker"
    )

    assert options.engine == "docker" and options.make_engine().docker
    assert options.make_engine().host == "unix:///run/x.sock"
    assert (options.conf, options.pull, options.user, options.ulimits) == (
        None,
        "missing",
        None,
        ("nofile=64:64",),
    )
    assert options.gpus == ("docker",)


def test_a_bare_podman_url_keeps_the_secure_defaults() -> None:
    options = parse_container_url("container://podman?conf=/x/containers.conf")

    assert (options.engine, options.conf, options.host) == ("podman", "/x/containers.conf", None)
    assert (options.user, options.network, options.pull) == ("job", "none", "never")
    assert (options.pids_limit, options.tmp_size, options.sidecar_memory) == (1024, "1g", "1g")
    assert options.ulimits == DEFAULT_ULIMITS
    assert (options.gpus, options.sidecar_image) == ((), None)


def test_a_side_car_image_moves_staging_into_containers_off_the_host_network() -> None:
    options = parse_container_url("container://podman?sidecar_image=localhost/wml/sidecar:0.1.0")

    # None: no network for file:// storage, the engine's default network for S3; never the host's.
    assert (options.sidecar_image, options.sidecar_network) == ("localhost/wml/sidecar:0.1.0", None)
    assert options.network == "none"  # the worker stays offline
    assert options.sidecar_timeout == 3600  # per step; the run timeout bounds the worker only
    other = parse_container_url("container://podman?sidecar_image=s:1&sidecar_network=wml&sidecar_timeout=60")
    assert (other.sidecar_network, other.sidecar_timeout) == ("wml", 60)


def test_cdi_gpu_devices_may_be_listed_with_commas_or_repeated() -> None:
    url = "container://podman?gpus=nvidia.com/gpu=0,nvidia.com/gpu=1&gpus=nvidia.com/gpu=2&gpu_type=A100"
    options = parse_container_url(url)

    assert options.gpus == ("nvidia.com/gpu=0", "nvidia.com/gpu=1", "nvidia.com/gpu=2")
    assert options.gpu_type == "A100"


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("container://docker?conf=/etc/wml/containers.conf", "podman option"),
        ("container://podman?host=unix:///x.sock", "docker option"),
        ("container://podman?gpus=docker", "container://docker"),
        ("container://docker?pull=sometimes", "pull must be one of"),
        ("container://docker?stop_timeout=soon", "stop_timeout must be a whole number"),
        ("container://docker?user=1&user=2", "given twice"),
        ("container://docker?sidecar=x", "unknown container workflow options: sidecar"),
    ],
)
def test_options_that_do_not_fit_the_engine_are_refused(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_container_url(url)


def test_docker_gets_one_entrypoint_executable_and_the_rest_of_the_command_as_arguments(make_run) -> None:
    run = make_run(command=["/bin/sh", "/app/entrypoint.sh"], args=["--flag"])
    common = {
        "name": "wml-x-j",
        "instance": "x",
        "env_file": "/j/worker.env",
        "inputs": "/i",
        "outputs": "/o",
        "user": None,
        "ulimits": (),
        "network": "none",
        "pull": "missing",
    }

    docker = run_args(run, docker=True, **common)
    podman = run_args(run, docker=False, **common)

    assert docker[docker.index("--entrypoint") :] == [
        "--entrypoint",
        "/bin/sh",
        run.image,
        "/app/entrypoint.sh",
        "--flag",
    ]
    assert podman[podman.index("--entrypoint") :] == [
        "--entrypoint",
        '["/bin/sh", "/app/entrypoint.sh"]',
        run.image,
        "--flag",
    ]
    assert "--pull=missing" in docker and "--pull=missing" in podman


def test_gpu_runs_get_cdi_devices_or_docker_gpus() -> None:
    two = Resources(gpu=2, gpu_type="A100")
    devices = ("nvidia.com/gpu=0", "nvidia.com/gpu=1", "nvidia.com/gpu=2")

    assert gpu_args(two, gpus=devices, gpu_type="A100") == [
        "--device",
        "nvidia.com/gpu=0",
        "--device",
        "nvidia.com/gpu=1",
    ]
    assert gpu_args(two, gpus=("nvidia.com/gpu=all",), gpu_type="A100") == ["--device", "nvidia.com/gpu=all"]
    assert gpu_args(two, gpus=("docker",), gpu_type="A100") == ["--gpus", "2"]
    assert gpu_args(Resources(gpu=0), gpus=(), gpu_type=None) == []


@pytest.mark.parametrize(
    ("resources", "gpus", "gpu_type", "complaint"),
    [
        (Resources(gpu=1), (), None, "offers none"),
        (Resources(gpu=3), ("nvidia.com/gpu=0", "nvidia.com/gpu=1"), None, "this host offers 2"),
        (Resources(gpu=1, gpu_type="H100"), ("docker",), "A100", "only 'A100'"),
        (Resources(gpu=1, gpu_type="H100"), ("docker",), None, "no declared type"),
    ],
)
def test_gpu_runs_the_host_cannot_serve_are_refused(resources, gpus, gpu_type, complaint) -> None:
    with pytest.raises(GpuUnavailableError, match=complaint):
        gpu_args(resources, gpus=gpus, gpu_type=gpu_type)


async def test_submitting_a_gpu_run_to_a_backend_without_gpus_fails_with_a_typed_error(
    tmp_path, storage, make_run
) -> None:
    backend = ContainerWorkflowBackend(tmp_path / "jobs", storage, ContainerOptions(stop_timeout=1))
    run = make_run(resources=Resources(cpu=1.0, memory=64 * 1024 * 1024, gpu=1))

    with pytest.raises(GpuUnavailableError, match="asks for 1 GPU"):
        await backend.submit(run)
    assert not (tmp_path / "jobs" / run.job_id).exists()


def test_a_side_car_step_container_mounts_the_job_and_gets_storage_settings_by_name_only() -> None:
    args = sidecar_args(
        "stage-out",
        image="localhost/wml/sidecar:0.1.0",
        name="wml-x-job-1",
        instance="x",
        job_id="job-1",
        mounts=[
            ("/jobs/job-1/outputs", "/wml/job/outputs", "ro"),
            ("/jobs/job-1/sidecar", "/wml/job/sidecar", "rw"),
        ],
        manifest="sidecar/stage-out.json",
        storage_env=["WML_STORAGE", "WML_S3_SECRET_ACCESS_KEY"],
        user="65532:65532",
    )

    assert args[:3] == ["run", "--rm", "--pull=never"]
    assert args[args.index("--name") + 1] == "wml-x-job-1.stage-out"
    assert {MANAGED_BY, f"{INSTANCE_LABEL}=x", "wml/job-id=job-1", "wml/step=stage-out"} <= set(args)
    volumes = [args[i + 1] for i, a in enumerate(args) if a == "--volume"]
    assert volumes == ["/jobs/job-1/outputs:/wml/job/outputs:ro", "/jobs/job-1/sidecar:/wml/job/sidecar:rw"]
    assert args[args.index("--user") + 1] == "65532:65532"
    assert {"--read-only", "--pids-limit=1024"} <= set(args) and args[args.index("--memory") + 1] == "1g"
    assert [args[i + 1] for i, a in enumerate(args) if a == "--env"] == [
        "WML_STORAGE",
        "WML_S3_SECRET_ACCESS_KEY",
    ]
    assert not any("--network" in a for a in args)  # None: the engine's default (not the host's)
    assert {"--cap-drop=all", "--security-opt=no-new-privileges"} <= set(args)
    assert "--cap-add=DAC_OVERRIDE" not in args  # only root inside needs it (no user given)
    image_at = args.index("localhost/wml/sidecar:0.1.0")
    assert args[image_at:] == [
        "localhost/wml/sidecar:0.1.0",
        "stage-out",
        "--manifest",
        "/wml/job/sidecar/stage-out.json",
        "--root",
        "/wml/job/outputs",
    ]


def test_an_unknown_side_car_step_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown side-car step"):
        sidecar_args(
            "stage-sideways",
            image="i",
            name="n",
            instance="x",
            job_id="j",
            mounts=[],
            manifest="m.json",
            storage_env=[],
        )
