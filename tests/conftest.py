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
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_build_args(tmp_path_factory, tiny_models) -> list[str]:
    """``curate build configs/demo.yaml`` arguments pointed at a temp output and the session's tiny models."""
    out = tmp_path_factory.mktemp("demo") / "out"
    return [
        "build",
        str(ROOT / "configs/demo.yaml"),
        "--input",
        str(ROOT / "examples/images"),
        "--output",
        str(out),
        "--set",
        f"tiny_models_dir={tiny_models}",
        "--set",
        f"caption.model.path={tiny_models}/llava",
        "--set",
        f"t5.model.path={tiny_models}/pixart_sigma",
        "--set",
        f"vae.model.path={tiny_models}/pixart_sigma",
    ]


@pytest.fixture(scope="session")
def demo_dataset(demo_build_args, ray_session) -> Path:
    """The demo dataset, built once per session on the embedded Ray through the real CLI."""
    from curation.cli import main

    assert main(demo_build_args) == 0
    return Path(demo_build_args[demo_build_args.index("--output") + 1])
