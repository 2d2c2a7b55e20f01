"""The side-car image's recipe (it cannot be built here: no base image can be pulled): it copies every
package the project installs, runs the side-car program, and runs it as a user without privileges."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = (ROOT / "sidecar" / "Containerfile").read_text(encoding="utf-8")


def final_stage() -> str:
    return CONTAINERFILE.rsplit("\nFROM ", 1)[1]


def test_every_installed_package_is_copied_into_the_build() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = set(re.findall(r"^COPY (\w+) \1$", CONTAINERFILE, flags=re.MULTILINE))

    assert copied == packages
    assert all((ROOT / name / "__init__.py").is_file() for name in copied)


def test_the_image_runs_the_side_car_as_an_unprivileged_user() -> None:
    user = re.search(r"^USER (\d+):(\d+)$", final_stage(), flags=re.MULTILINE)
    entrypoint = re.search(r"^ENTRYPOINT (.+)$", final_stage(), flags=re.MULTILINE)

    assert user is not None and int(user[1]) != 0 and int(user[2]) != 0
    assert entrypoint is not None and json.loads(entrypoint[1]) == ["wml", "sidecar"]
