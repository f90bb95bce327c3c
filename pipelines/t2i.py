"""The text-to-image curation pipeline: read → filter → caption → VAE → T5 → shards.

``build`` turns a config into the Ray Data graph; ``run`` prepares the output, executes the graph on
the connected Ray (embedded local unless ``RAY_ADDRESS`` / ``ray.address`` says otherwise) and writes
the manifest last.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import uuid
from datetime import UTC, datetime
from importlib import metadata
from types import SimpleNamespace

import ray
import ray.data

from curation.config import CaptionConfig, Resources, RunConfig, fingerprint
from curation.io import readers, writer
from curation.models.loading import check_model_paths, model_records, resolve_numerics
from curation.models.paths import ModelsOnNode, model_refs, resolve_model_paths
from curation.models.tiny import ensure_tiny_models
from curation.stages.caption import CaptionStage
from curation.stages.filter import FilterStage
from curation.stages.prepare import PrepareSpec
from curation.stages.scorers import ScorerStage
from curation.stages.t5 import T5Stage
from curation.stages.vae import VAEStage
from curation.stats import summarize_idle
from curation.terminal import worker_logs_wanted
from pipelines import dedup
from pipelines.preflight import check_cluster, stage_pools, with_pool_sizes
from pipelines.ray_stages import StatsRecorder, apply_stage
from pipelines.read import read_units
from pipelines.vllm_caption import HELPER_CPUS, add_vllm_caption, engine_bundle

log = logging.getLogger(__name__)

_PACKAGES = ("pixart-curation", "torch", "transformers", "diffusers", "ray", "webdataset", "pyarrow", "pillow")


def build(
    config: RunConfig,
    units: list[dict],
    finished: dedup.FinishedInputs,
    recorder,
    rejections: dict[int, dict[int, list[str]]] | None = None,
) -> ray.data.Dataset:
    """The Ray Data graph for one run; executed by ``write_datasink`` (lazy until then).

    ``rejections``: per read unit index, {position: [key, reason, detail]} from ``dedup.plan_rejections``;
    each unit travels with its own, so a read task never deserialises the others'.
    """
    finished_ref = ray.put(finished)
    rejections = rejections or {}
    items = [{"unit": json.dumps(u), "dedup": json.dumps(rejections.get(i, {}))} for i, u in enumerate(units)]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, len(units)))
    dataset = dataset.map_batches(
        read_units,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={
            "reader_config": config.reader,
            "max_bytes": config.filter.max_bytes,
            "finished_ref": [finished_ref],
            "recorder": recorder,
        },
        num_cpus=1,
    )
    for factory in stage_factories(config):
        if config.caption.backend == "vllm" and _stage_name(factory) == CaptionStage.name:
            dataset = add_vllm_caption(dataset, config.caption, recorder=recorder)
        else:
            dataset = apply_stage(dataset, on_node(factory, config), recorder)
    return dataset


def _stage_name(factory) -> str:
    return factory().name  # cheap: constructors only store config


def on_node(factory, config: RunConfig) -> ModelsOnNode:
    """A factory that first makes the demo's tiny models available on the worker's node (no-op otherwise)."""
    paths = tuple(ref.path for ref in model_refs(config))
    return ModelsOnNode(factory, paths, config.tiny_models_dir)


def prepare_spec(config: RunConfig) -> PrepareSpec:
    """What the filter stage prepares, from one decode, for the model stages that follow it."""
    return PrepareSpec(
        base_size=config.vae.aspect_ratios,
        interpolation=config.vae.interpolation,
        caption_max_side=config.caption.max_image_side,
        scorer_side=config.scorers.image_side if config.scorers.enabled else None,
        draft=config.filter.draft,
    )


def stage_factories(config: RunConfig) -> list:
    """The stages in data-flow order; each factory builds a stage inside its worker.

    The scorers run first among the model stages, so no GPU time goes to images they reject. The VAE runs
    before the caption stage: its prepared pixels (the largest thing a row carries) leave the row there, so
    rows queued in front of the slowest stage, the captioner, stay small.
    """
    scorers = [functools.partial(ScorerStage, config.scorers)] if config.scorers.enabled else []
    return [
        functools.partial(FilterStage, config.filter, prepare_spec(config)),
        *scorers,
        functools.partial(VAEStage, config.vae),
        functools.partial(CaptionStage, config.caption),
        functools.partial(T5Stage, config.t5, config.t5.captions or list(config.caption.jobs)),
    ]


def run(config: RunConfig, overwrite: bool = False) -> dict:
    """Execute the pipeline and return the manifest."""
    if not config.input:
        raise ValueError("no input: give --input URI or set `input:` in the config")
    if not config.output:
        raise ValueError("no output: give --output DIR or set `output:` in the config")
    run_fingerprint = fingerprint(config)  # of the recipe as given: resuming from another working dir still matches
    recipe, config = config, resolve_model_paths(config)  # relative paths: the driver's working dir, every node
    if config.tiny_models_dir:
        ensure_tiny_models(config.tiny_models_dir)
    check_model_paths([config.caption.model, config.t5.model, config.vae.model, *config.scorers.model_refs().values()])
    started = _now()
    _init_ray(config)
    # device/dtype "auto" resolved once, here, for every worker; the manifest's config stays the recipe.
    config = resolve_numerics(config, ray.cluster_resources().get("GPU", 0))
    config = fit_pools_to_cluster(config)
    models = model_records(config)
    writer.prepare_output(config.output, run_fingerprint, overwrite, models)
    plan = readers.plan_inputs(config.input, config.reader)
    units = plan.units
    finished = dedup.finished_inputs(config.output)
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    log.info("run %s: %d read units, %d inputs already done", run_id, len(units), len(finished.keys))
    recorder = StatsRecorder.remote()
    plan_dedup = dedup.plan_rejections(
        units,
        config.reader,
        config.filter.max_bytes,
        config.filter.max_pixels,
        config.dedup,
        finished,
        dedup.written_hashes(config.output) if config.dedup.enabled else dedup.CONTENT_SCHEMA.empty_table(),
        recorder,
    )
    dataset = build(config, units, finished, recorder, plan_dedup.by_unit)
    dataset.write_datasink(
        writer.ShardSink(config.output, config.writer.samples_per_shard, run_id, recorder),
        concurrency=config.writer.num_workers,
    )
    stats = ray.get(recorder.snapshot.remote())
    ray.kill(recorder)
    fields = _manifest_fields(recipe, run_fingerprint, run_id, started, models)
    flow = [dedup.STAGE, "read", *(factory().name for factory in stage_factories(config)), "write"]
    stages = {name: stats["stages"].get(name) or summarize_idle() for name in flow}
    stages[dedup.STAGE].update(plan_dedup.figures)
    fields.update(stages=stages, inputs={**stats["inputs"], **plan.counts()})
    manifest = writer.finalize(config.output, fields, inputs_read=stats["inputs"].get("input", 0))
    check_failures(manifest, config.run.max_failed_fraction, config.output)
    return manifest


def fit_pools_to_cluster(config: RunConfig) -> RunConfig:
    """Pre-flight: refuse at once, in one line, pools the cluster cannot place (else Ray Data waits forever)."""
    stages = [factory() for factory in stage_factories(config)]
    if config.caption.backend == "vllm":
        stages = [stage for stage in stages if stage.name != CaptionStage.name]
        stages.extend(vllm_pool_stages(config.caption))
    pools, tasks = stage_pools(stages)
    embedded = not (config.ray.address or os.environ.get("RAY_ADDRESS"))
    sizes = check_cluster(pools, tasks, embedded=embedded, allow_autoscaling=config.ray.allow_autoscaling)
    return with_pool_sizes(config, sizes)


def vllm_pool_stages(caption: CaptionConfig) -> list[SimpleNamespace]:
    """The vLLM backend as the pre-flight sees it: the engines (a fixed pool of placement groups, one bundle
    each, as ``vllm_caption.engine_bundle`` reserves them) and the one collector actor that reassembles rows."""
    res = caption.resources
    engines = SimpleNamespace(name="caption", uses_model=True, resources=res, placement_bundles=(engine_bundle(res),))
    collector = Resources(num_cpus=HELPER_CPUS, num_gpus=0, num_workers=1)
    return [engines, SimpleNamespace(name="caption collector", uses_model=True, resources=collector, setting="")]


class TooManyFailuresError(ValueError):
    """More inputs failed than ``run.max_failed_fraction`` allows; the dataset and manifest are written."""


def check_failures(manifest: dict, max_fraction: float, output: str) -> None:
    """Raise when ``counts.failed / counts.input`` is above ``max_fraction`` (FAILED inputs are retried on rerun)."""
    failed, inputs = manifest["counts"]["failed"], manifest["counts"]["input"]
    fraction = failed / inputs if inputs else 0.0
    if fraction > max_fraction:
        raise TooManyFailuresError(
            f"{failed} of {inputs} inputs failed ({fraction:.1%} > run.max_failed_fraction {max_fraction:.1%}); "
            f"dataset and manifest written, tracebacks in {output}/_run/errors-*.jsonl; rerun to retry them"
        )


def _init_ray(config: RunConfig) -> None:
    if not ray.is_initialized():
        _connect_ray(config)
    context = ray.data.DataContext.get_current()
    context.target_max_block_size = config.ray.max_block_bytes


def _connect_ray(config: RunConfig) -> None:
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    # "local" always starts an embedded Ray, even when a `ray start` cluster happens to run on this machine
    # (plain ray.init() would join it): the contract is RAY_ADDRESS or embedded.
    ray.init(
        address="local",
        num_cpus=config.ray.num_cpus,
        object_store_memory=config.ray.object_store_memory,
        include_dashboard=False,
        log_to_driver=worker_logs_wanted(),
    )


def _manifest_fields(config: RunConfig, run_fingerprint: str, run_id: str, started: str, models: dict) -> dict:
    return {
        "config": config.model_dump(mode="json"),
        "fingerprint": run_fingerprint,
        "run_id": run_id,
        "flavor": config.flavor,
        "caption_cleaning": config.t5.caption_cleaning,
        "models": models,  # model_records of the resolved config: provenance + device + dtype per model
        "versions": _versions(),
        "ray": {"address": config.ray.address or os.environ.get("RAY_ADDRESS") or "embedded"},
        "started_at": started,
        "finished_at": _now(),
    }


def _versions() -> dict[str, str]:
    versions = {}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
