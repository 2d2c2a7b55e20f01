"""The container backend's options, read from its URL (``container://podman?...``, ``container://docker?...``).

Every option is a URL query parameter (the README lists them); unknown ones are refused, so a typo does not
silently fall back to a default. podman-only (``conf``) and docker-only (``host``, ``gpus=docker``) options
are refused for the other engine.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from backends.workflow.host.container.cli import Engine
from backends.workflow.host.uids import job_uid

DEFAULT_CONF = "/etc/wml/containers.conf"  # written by scripts/podman-setup
DEFAULT_ULIMITS = ("nofile=1024:1024", "nproc=4096:4096")
ENGINES = ("podman", "docker")
PULL_POLICIES = ("never", "missing", "always", "newer")
_REPEATABLE = {"ulimit", "gpus"}
_OPTIONS = {
    "conf", "host", "user", "ulimit", "network", "pull", "stop_timeout", "log_tail_lines",
    "gpus", "gpu_type", "sidecar_image", "sidecar_network",
    "sidecar_timeout", "sidecar_memory", "pids_limit", "tmp_size",
}  # fmt: skip
JOB_USER = "job"  # the user option's default: each job's containers run as a uid of their own


@dataclass(frozen=True, slots=True)
class ContainerOptions:
    """How the container backend drives its engine; the defaults are the secure ones."""

    engine: str = "podman"  # the CLI binary: podman or docker
    conf: str | None = None  # podman: a containers.conf, passed as CONTAINERS_CONF
    host: str | None = None  # docker: the daemon (or podman service) socket, passed as DOCKER_HOST
    # "job": a uid of the job's own (backends.workflow.host.uids) when the server runs as root, else
    # 65534 (nobody); "UID[:GID]": that user for every job; None: the image's own user.
    user: str | None = JOB_USER
    ulimits: tuple[str, ...] = DEFAULT_ULIMITS
    network: str = "none"
    pull: str = "never"
    stop_timeout: int = 5  # seconds between SIGTERM and SIGKILL on cancel and timeout
    log_tail_lines: int = 50
    # GPUs this host offers: CDI device names (``nvidia.com/gpu=0``, or ``nvidia.com/gpu=all``), or the single
    # value ``docker`` for docker's own ``--gpus N``. Empty: an asset that asks for a GPU is refused.
    gpus: tuple[str, ...] = ()
    gpu_type: str | None = None  # the GPU product this host has, matched against an asset's gpuType
    sidecar_image: str | None = None  # stage-in/stage-out as containers of this image; None: in-process
    # The side-car containers' network; None: none for file:// storage (the job's own files are staged
    # through its directory), else the engine's default network (they reach the storage).
    sidecar_network: str | None = None
    sidecar_timeout: int = 3600  # seconds one side-car step may take (the run timeout is the worker's)
    sidecar_memory: str = "1g"  # memory limit of each side-car container
    pids_limit: int = 1024  # processes (and threads) of each container
    tmp_size: str = "1g"  # the size of the tmpfs at /tmp (the root file system is read-only)

    def make_engine(self, cwd: str | None = None) -> Engine:
        return Engine(self.engine, self.conf, self.host, cwd)

    def user_for(self, job_id: str) -> str | None:
        """The ``--user`` of job ``job_id``'s containers (see :attr:`user`)."""
        if self.user != JOB_USER:
            return self.user
        if os.geteuid() != 0:  # only root can chown the job's directories to a uid of the job's own
            return "65534:65534"
        uid = job_uid(job_id)
        return f"{uid}:{uid}"

    @property
    def docker_gpus(self) -> bool:
        return self.gpus == ("docker",)


def parse_container_url(url: str) -> ContainerOptions:
    """The options of ``container://ENGINE?...``; a ValueError names what is wrong."""
    parts = urlsplit(url)
    engine = parts.netloc
    if engine not in ENGINES or parts.path.strip("/"):
        raise ValueError("use container://podman or container://docker, with options as ?key=value")
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    unknown = {k for k, _ in pairs} - _OPTIONS
    if unknown:
        raise ValueError(f"unknown container workflow options: {', '.join(sorted(unknown))}")
    single = [k for k, _ in pairs if k not in _REPEATABLE]
    if len(set(single)) != len(single):
        raise ValueError("a container workflow option other than ulimit and gpus is given twice")
    once = {k: v for k, v in pairs if k not in _REPEATABLE}
    gpus = tuple(g for k, v in pairs if k == "gpus" for g in v.split(",") if g)
    _check_engine_options(engine, once, gpus)
    pull = once.get("pull", "never")
    if pull not in PULL_POLICIES:
        raise ValueError(f"pull must be one of {', '.join(PULL_POLICIES)}")
    conf = once.get("conf") or None
    if engine == "podman" and conf is None and os.path.exists(DEFAULT_CONF):
        conf = DEFAULT_CONF
    return ContainerOptions(
        engine=engine,
        conf=conf,
        host=once.get("host") or None,
        user=once.get("user", JOB_USER) or None,
        ulimits=tuple(v for k, v in pairs if k == "ulimit") or DEFAULT_ULIMITS,
        network=once.get("network") or "none",
        pull=pull,
        stop_timeout=_natural(once, "stop_timeout", 5),
        log_tail_lines=_natural(once, "log_tail_lines", 50),
        gpus=gpus,
        gpu_type=once.get("gpu_type") or None,
        sidecar_image=once.get("sidecar_image") or None,
        sidecar_network=once.get("sidecar_network") or None,
        sidecar_timeout=_natural(once, "sidecar_timeout", 3600),
        sidecar_memory=_size(once, "sidecar_memory", "1g"),
        pids_limit=_natural(once, "pids_limit", 1024) or 1024,
        tmp_size=_size(once, "tmp_size", "1g"),
    )


def _check_engine_options(engine: str, once: dict[str, str], gpus: tuple[str, ...]) -> None:
    if engine == "docker" and "conf" in once:
        raise ValueError("conf (a containers.conf) is a podman option; docker has no such file")
    if engine == "podman" and "host" in once:
        raise ValueError("host is a docker option; run podman on this host, or docker against its socket")
    if "docker" in gpus and (engine != "docker" or len(gpus) > 1):
        raise ValueError("gpus=docker (docker's --gpus) works only alone, with container://docker")


def _size(options: dict[str, str], key: str, default: str) -> str:
    raw = options.get(key) or default
    if not re.fullmatch(r"[1-9][0-9]*[kmg]?", raw):
        raise ValueError(f"{key} must be a size such as 512m or 2g")
    return raw


def _natural(options: dict[str, str], key: str, default: int) -> int:
    raw = options.get(key)
    if raw is None:
        return default
    if not raw.isdigit():
        raise ValueError(f"{key} must be a whole number of {'seconds' if 'timeout' in key else 'lines'}")
    return int(raw)
