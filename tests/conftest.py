"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight models, written once per test session (LLaVA at ``<dir>/llava``)."""
    from curation.models.tiny import ensure_tiny_models

    return ensure_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def ray_session():
    """One embedded Ray for the whole test session (4 logical CPUs, as the demo recipe asks)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
