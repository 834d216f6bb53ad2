"""environment.yml (conda users) and pyproject.toml (pip users) list the same dependencies."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# conda-forge names that differ from PyPI's
CONDA_TO_PYPI = {"pytorch": "torch", "dask": "dask[distributed]"}


def _split(requirement: str) -> tuple[str, str]:
    name, spec = re.match(r"\s*([A-Za-z0-9_.\-\[\]]+)\s*(.*)", requirement).groups()
    return name.lower(), spec.replace(" ", "")


def _pyproject() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["test"]
    return dict(_split(r) for r in reqs)


def _environment() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    out: dict[str, str] = {}
    for item in env["dependencies"]:
        for req in item["pip"] if isinstance(item, dict) else [item]:
            name, spec = _split(req)
            if name in ("python", "pip"):
                continue
            out[CONDA_TO_PYPI.get(name, name)] = spec
    return out


def test_environment_yml_and_pyproject_list_the_same_packages_and_ranges():
    pyproject, environment = _pyproject(), _environment()
    distributed = environment.pop("distributed", None)
    assert environment == pyproject
    assert distributed == pyproject["dask[distributed]"], "dask and distributed must share one range"


def test_torch_range_admits_the_cpu_build_the_makefile_installs_first():
    makefile = (ROOT / "Makefile").read_text()
    pinned = re.search(r"TORCH\s*\?=\s*torch==([\d.]+)", makefile).group(1)
    spec = _pyproject()["torch"]
    from packaging.specifiers import SpecifierSet

    assert pinned in SpecifierSet(spec), f"torch=={pinned} (Makefile) is outside {spec} (pyproject): pip would replace it"


def test_jupyter_book_stays_on_version_1():
    from packaging.specifiers import SpecifierSet

    spec = SpecifierSet(_pyproject()["jupyter-book"])
    assert "1.0.4" in spec and "2.0.0" not in spec
