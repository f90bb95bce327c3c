"""Pre-flight: refuse at once, in one line, a run whose stage pools cannot all be placed on the cluster.

Ray Data waits forever ("backpressured: ResourceBudget") when a fixed actor pool, or the pools plus one
CPU task, do not fit: nothing else tells the user why. ``plan`` decides it before execution from the
stage pools and the nodes' total resources, and names the ``--set`` that fixes it.

The placement model (Ray's own, simplified):

- a node has CPUs and GPU instances; a fractional GPU request fits an instance only while that
  instance has the share left (Ray accounts GPUs per instance), a whole request takes whole instances;
- an actor pool reserves ``num_workers`` workers for the whole run; a worker is one bundle
  ``{CPU: num_cpus, GPU: num_gpus}``, or a vLLM engine's placement-group bundles (all on one node
  with ``STRICT_PACK``, any nodes with ``PACK``);
- the CPU tasks (read, filter, write) reserve nothing but need one slot: the largest ``num_cpus`` any of
  them asks, free beside the pools.

Demands are placed first-fit in this order: fixed GPU pools (largest per-worker GPU first), fixed CPU
pools (largest per-worker CPU first), the task slot, then the pools whose ``num_workers`` is ``auto`` (one
worker each, then one more each in turn while any fits). CPU-only demands try nodes without GPUs first,
as Ray keeps CPU-only work off GPU nodes while it can. First-fit can refuse a packing that an exhaustive
search would find (unusual with nodes of one shape); ``ray.allow_autoscaling`` turns the refusal into a
warning, for a cluster that grows on demand.

The fix named in the message is the first single ``--set`` with which the whole plan succeeds, tried in
this order: fewer workers of the failing pool (as many as fit), ``num_gpus=0`` where the cluster has no
GPU, per-worker GPUs or CPUs that fit the largest node, fewer workers of another pool (the biggest user
of the missing resource first), and for the embedded Ray a larger ``ray.num_cpus``.
Only CPUs and GPUs are checked (not memory or custom resources).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

log = logging.getLogger(__name__)

AUTO = "auto"
EPS = 1e-9
Bundle = Mapping[str, float]


class ClusterTooSmallError(ValueError):
    """The configured pools cannot all be placed; the message is one line ending with the fix.

    A ``ValueError``: the CLI reports it as a user error (one line, exit status 2).
    """


@dataclass(frozen=True)
class Pool:
    """A fixed pool of actors of one stage."""

    name: str
    num_cpus: float
    num_gpus: float = 0.0
    num_workers: int | str = 1  # or "auto": as many as fit
    bundles: tuple[Bundle, ...] = ()  # a vLLM engine's placement group; replaces num_cpus/num_gpus
    strategy: Literal["PACK", "STRICT_PACK"] = "STRICT_PACK"
    setting: str | None = None  # the config section that sizes it (--set SECTION.resources...); default: name

    @property
    def section(self) -> str | None:
        return self.setting if self.setting is not None else self.name

    @property
    def worker(self) -> tuple[Bundle, ...]:
        return self.bundles or ({"CPU": self.num_cpus, "GPU": self.num_gpus},)

    def per_worker(self, resource: str) -> float:
        return sum(bundle.get(resource, 0.0) for bundle in self.worker)

    @property
    def is_auto(self) -> bool:
        return self.num_workers == AUTO


@dataclass
class Node:
    """What is free on one node: CPUs and the free share of each GPU instance."""

    cpus: float
    gpus: list[float] = field(default_factory=list)

    @classmethod
    def from_resources(cls, resources: Mapping[str, float]) -> Node:
        """From Ray's per-node totals (``ray.nodes()[i]["Resources"]``)."""
        return cls(float(resources.get("CPU", 0.0)), [1.0] * int(resources.get("GPU", 0.0) + EPS))

    def copy(self) -> Node:
        return Node(self.cpus, list(self.gpus))

    def total(self, resource: str) -> float:
        return self.cpus if resource == "CPU" else float(len(self.gpus))

    def take(self, bundle: Bundle) -> bool:
        """Reserve ``bundle`` here if it fits (and say whether it did)."""
        cpus, gpus = bundle.get("CPU", 0.0), bundle.get("GPU", 0.0)
        if cpus > self.cpus + EPS:
            return False
        instances = self._gpu_instances(gpus)
        if instances is None:
            return False
        self.cpus -= cpus
        share = gpus if gpus < 1 else 1.0
        for index in instances:
            self.gpus[index] -= share
        return True

    def _gpu_instances(self, gpus: float) -> list[int] | None:
        if gpus <= EPS:
            return []
        if gpus < 1:
            fitting = [i for i, free in enumerate(self.gpus) if free + EPS >= gpus]
            return fitting[:1] or None
        whole = [i for i, free in enumerate(self.gpus) if free + EPS >= 1.0]
        return whole[: int(gpus)] if len(whole) >= int(gpus) else None


def _cpu_first(nodes: list[Node]) -> list[Node]:
    return [n for n in nodes if not n.gpus] + [n for n in nodes if n.gpus]


def _place(nodes: list[Node], bundles: Sequence[Bundle], strategy: str = "STRICT_PACK") -> bool:
    """First-fit ``bundles`` (one worker) onto ``nodes``; on failure nothing is taken."""
    wants_gpu = any(b.get("GPU", 0.0) > 0 for b in bundles)
    order = nodes if wants_gpu else _cpu_first(nodes)
    for node in order:
        trial = node.copy()
        if all(trial.take(b) for b in bundles):
            node.cpus, node.gpus = trial.cpus, trial.gpus
            return True
    if strategy == "STRICT_PACK" or len(bundles) == 1:
        return False
    trials = [n.copy() for n in order]
    for bundle in bundles:
        if not any(t.take(bundle) for t in trials):
            return False
    for node, trial in zip(order, trials, strict=True):
        node.cpus, node.gpus = trial.cpus, trial.gpus
    return True


@dataclass(frozen=True)
class _Failure:
    demand: str  # the pool that did not fit, or TASKS
    placed: int  # its workers placed before the failure
    free: tuple[Node, ...]  # what the nodes had left then


TASKS = "the CPU tasks"


def _placement_order(pools: Iterable[Pool]) -> list[Pool]:
    """Fixed pools, GPU pools first (largest per-worker GPU first), then CPU pools (largest CPU first)."""
    fixed = [p for p in pools if not p.is_auto]
    gpu = sorted((p for p in fixed if p.per_worker("GPU") > 0), key=lambda p: -p.per_worker("GPU"))
    cpu = sorted((p for p in fixed if p.per_worker("GPU") <= 0), key=lambda p: -p.per_worker("CPU"))
    return gpu + cpu


def _try_plan(pools: Sequence[Pool], task_cpus: float, nodes: Sequence[Node]) -> dict[str, int] | _Failure:
    free = [n.copy() for n in nodes]
    sizes: dict[str, int] = {}
    for pool in _placement_order(pools):
        for placed in range(int(pool.num_workers)):
            if not _place(free, pool.worker, pool.strategy):
                return _Failure(pool.name, placed, tuple(free))
        sizes[pool.name] = int(pool.num_workers)
    if task_cpus > 0 and not _place(free, [{"CPU": task_cpus}]):
        return _Failure(TASKS, 0, tuple(free))
    auto = [p for p in pools if p.is_auto]
    for pool in auto:
        if not _place(free, pool.worker, pool.strategy):
            return _Failure(pool.name, 0, tuple(free))
        sizes[pool.name] = 1
    while auto:  # one more worker each, in turn, while any fits
        auto = [p for p in auto if _place(free, p.worker, p.strategy)]
        for pool in auto:
            sizes[pool.name] += 1
    return sizes


# ---------------------------------------------------------------- the one-line answer


def _amount(value: float, resource: str) -> str:
    return f"{value:g} {resource}" + ("" if abs(value - 1) < EPS else "s")


def _demand(pool: Pool, resource: str) -> float:
    return pool.per_worker(resource) * (1 if pool.is_auto else int(pool.num_workers))


def _short_resource(pool: Pool, failure: _Failure) -> str:
    """GPU when the GPU part of a worker no longer fits anywhere, else CPU."""
    gpu_part = [{"GPU": b.get("GPU", 0.0)} for b in pool.worker]
    if pool.per_worker("GPU") > 0 and not _place([n.copy() for n in failure.free], gpu_part, pool.strategy):
        return "GPU"
    return "CPU"


def _others_clause(others: dict[str, float]) -> str:
    """`` (2 for caption 1, vae 0.5, t5 0.5)``: what the other demands take of the same resource."""
    others = {name: amount for name, amount in others.items() if amount > 0}
    if not others:
        return ""
    if len(others) == 1:
        return f" ({sum(others.values()):g} for {next(iter(others))})"
    return f" ({sum(others.values()):g} for {', '.join(f'{name} {amount:g}' for name, amount in others.items())})"


def _describe(failure: _Failure, pools: Sequence[Pool], task_cpus: float, tasks: Sequence[str], nodes) -> str:
    if failure.demand == TASKS:
        total = sum(n.total("CPU") for n in nodes)
        names = f" ({', '.join(tasks)})" if tasks else ""
        others = {p.name: _demand(p, "CPU") for p in pools if not p.is_auto}
        return (
            f"{TASKS}{names} need {_amount(task_cpus, 'CPU')} beside the actor pools, "
            f"the cluster has {total:g}{_others_clause(others)}" + _fragmented(task_cpus, others, total)
        )
    pool = next(p for p in pools if p.name == failure.demand)
    resource = _short_resource(pool, failure)
    per = pool.per_worker(resource)
    largest = max((n.total(resource) for n in nodes), default=0.0)
    if per > largest + EPS and largest > 0:
        return f"{pool.name} needs {_amount(per, resource)} on one node per worker, the largest node has {largest:g}"
    others = {p.name: _demand(p, resource) for p in pools if p is not pool and not p.is_auto}
    if resource == "CPU":
        others[TASKS] = task_cpus
    total = sum(n.total(resource) for n in nodes)
    workers = 1 if pool.is_auto else int(pool.num_workers)
    plural = "s" if workers != 1 else ""
    return (
        f"{pool.name} needs {_amount(per * workers, resource)} ({workers} worker{plural} × {per:g}), "
        f"the cluster has {f'{total:g}' if total > 0 else 'none'}{_others_clause(others)}"
        + _fragmented(per * workers, others, total)
    )


def _fragmented(needed: float, others: dict[str, float], total: float) -> str:
    """Enough in total, but split across nodes (or GPU instances) so that no piece holds what is asked."""
    return ", not in pieces that fit" if 0 < needed + sum(others.values()) <= total + EPS else ""


@dataclass(frozen=True)
class _Fix:
    setting: str  # what --set takes
    pools: tuple[Pool, ...]
    nodes: tuple[Node, ...]


def _with(pools: Sequence[Pool], name: str, **changes) -> tuple[Pool, ...]:
    return tuple(replace(p, **changes) if p.name == name else p for p in pools)


def _own_fixes(pool: Pool, failure: _Failure, pools: Sequence[Pool], nodes: tuple[Node, ...]):
    """Fewer workers of the failing pool, no GPU where the cluster has none, or GPUs that fit one node."""
    for workers in range(failure.placed, 0, -1):
        fewer = _with(pools, pool.name, num_workers=workers)
        yield _Fix(f"{pool.section}.resources.num_workers={workers}", fewer, nodes)
    if pool.bundles:
        return
    largest_gpu = max((n.total("GPU") for n in nodes), default=0.0)
    if pool.num_gpus > 0 and largest_gpu == 0:
        yield _Fix(f"{pool.section}.resources.num_gpus=0", _with(pools, pool.name, num_gpus=0.0), nodes)
    if 1 <= largest_gpu < pool.num_gpus:
        smaller = _with(pools, pool.name, num_gpus=largest_gpu)
        yield _Fix(f"{pool.section}.resources.num_gpus={largest_gpu:g}", smaller, nodes)
    largest_cpu = max((n.total("CPU") for n in nodes), default=0.0)
    if 0 < largest_cpu < pool.num_cpus:
        smaller = _with(pools, pool.name, num_cpus=largest_cpu)
        yield _Fix(f"{pool.section}.resources.num_cpus={largest_cpu:g}", smaller, nodes)


def _embedded_fixes(pools: Sequence[Pool], task_cpus: float, node: Node):
    """A bigger embedded Ray: the smallest ``ray.num_cpus`` that fits everything (logical CPUs)."""
    demand = task_cpus + sum(_demand(p, "CPU") for p in pools)
    for cpus in range(math.floor(node.cpus) + 1, math.ceil(demand) + 2):
        yield _Fix(f"ray.num_cpus={cpus}", tuple(pools), (Node(float(cpus), list(node.gpus)),))


def _other_pool_fixes(failing: Pool | None, resource: str, pools: Sequence[Pool], nodes: tuple[Node, ...]):
    """Fewer workers of another pool, the biggest user of the missing resource first."""
    others = [p for p in pools if p is not failing and p.section and not p.is_auto and int(p.num_workers) > 1]
    for other in sorted(others, key=lambda p: -_demand(p, resource)):
        for workers in range(int(other.num_workers) - 1, 0, -1):
            fewer = _with(pools, other.name, num_workers=workers)
            yield _Fix(f"{other.section}.resources.num_workers={workers}", fewer, nodes)


def _first_fix(
    failure: _Failure, pools: Sequence[Pool], task_cpus: float, nodes: Sequence[Node], embedded: bool
) -> str | None:
    """The first single ``--set`` (the failing pool's own first) with which the whole plan succeeds."""
    frozen = tuple(nodes)
    pool = next((p for p in pools if p.name == failure.demand), None)
    resource = _short_resource(pool, failure) if pool else "CPU"
    candidates = []
    if pool is not None and pool.section:
        candidates.append(_own_fixes(pool, failure, pools, frozen))
    candidates.append(_other_pool_fixes(pool, resource, pools, frozen))
    if embedded and len(nodes) == 1 and resource == "CPU":
        candidates.append(_embedded_fixes(pools, task_cpus, nodes[0]))
    for fixes in candidates:
        for fix in fixes:
            if not isinstance(_try_plan(fix.pools, task_cpus, fix.nodes), _Failure):
                return fix.setting
    return None


def plan(
    pools: Sequence[Pool],
    tasks: Mapping[str, float],
    nodes: Sequence[Node],
    *,
    embedded: bool = False,
) -> dict[str, int]:
    """Pool sizes for this cluster ({pool name: num_workers}, ``auto`` resolved), or ``ClusterTooSmallError``.

    ``tasks``: the CPU task stages and their ``num_cpus`` (one slot of the largest must stay free).
    ``embedded``: the cluster is the embedded local Ray, whose size ``--set ray.num_cpus=N`` changes.
    """
    task_cpus = max(tasks.values(), default=0.0)
    result = _try_plan(pools, task_cpus, nodes)
    if not isinstance(result, _Failure):
        return result
    message = _describe(result, pools, task_cpus, list(tasks), nodes)
    fix = _first_fix(result, pools, task_cpus, nodes, embedded)
    hint = f"--set {fix}" if fix else "no single --set fixes it: add nodes, or lower the pools' num_workers/num_cpus"
    raise ClusterTooSmallError(f"{message}: {hint}")


def best_effort_sizes(pools: Sequence[Pool], nodes: Sequence[Node]) -> dict[str, int]:
    """Sizes when the refusal is waived: fixed pools as configured, ``auto`` pools what fits now (at least 1)."""
    sizes = {p.name: int(p.num_workers) for p in pools if not p.is_auto}
    auto = [p for p in pools if p.is_auto]
    if auto:
        fitted = _try_plan(auto, 0.0, nodes)
        for pool in auto:
            sizes[pool.name] = fitted.get(pool.name, 1) if isinstance(fitted, dict) else 1
    return sizes


# ---------------------------------------------------------------- the Ray side


def stage_pools(
    stages: Iterable, read_cpus: float = 1.0, write_cpus: float = 1.0
) -> tuple[list[Pool], dict[str, float]]:
    """Pools and CPU tasks of the pipeline's stages (model stages are actor pools, the others tasks).

    A stage may declare ``placement_bundles`` (a vLLM engine's placement group) for its workers, and
    ``setting`` (the config section that sizes it, "" for none; default: its name).
    """
    pools, tasks = [], {"read": read_cpus}
    for stage in stages:
        res = stage.resources
        if stage.uses_model:
            bundles = tuple(getattr(stage, "placement_bundles", None) or ())
            setting = getattr(stage, "setting", None)  # "" for a pool no --set sizes (the vLLM collector)
            pools.append(Pool(stage.name, res.num_cpus, res.num_gpus, res.num_workers, bundles, setting=setting))
        else:
            tasks[stage.name] = res.num_cpus
    tasks["write"] = write_cpus
    return pools, tasks


def cluster_nodes() -> list[Node]:
    """The alive nodes of the connected Ray with their total CPUs and GPUs."""
    import ray

    return [Node.from_resources(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


def check_cluster(
    pools: Sequence[Pool], tasks: Mapping[str, float], *, embedded: bool, allow_autoscaling: bool = False
) -> dict[str, int]:
    """``plan`` against the connected Ray; with ``allow_autoscaling`` a misfit is a warning, not an error."""
    nodes = cluster_nodes()
    try:
        sizes = plan(pools, tasks, nodes, embedded=embedded)
    except ClusterTooSmallError as error:
        if not allow_autoscaling:
            raise
        log.warning("%s (ray.allow_autoscaling: starting anyway, for the cluster to grow)", error)
        sizes = best_effort_sizes(pools, nodes)
    for pool in pools:
        if pool.is_auto:
            log.info(
                "%s: num_workers auto -> %d (what the cluster fits beside the other pools)",
                pool.name,
                sizes[pool.name],
            )
    return sizes


def with_pool_sizes(config, sizes: Mapping[str, int]):
    """A copy of a run config whose stages' ``resources.num_workers`` are ``sizes`` ({config section: n})."""
    updates = {}
    for section, workers in sizes.items():
        stage = getattr(config, section, None)
        resources = getattr(stage, "resources", None)
        if resources is None or resources.num_workers == workers:
            continue
        resized = resources.model_copy(update={"num_workers": workers})
        updates[section] = stage.model_copy(update={"resources": resized})
    return config.model_copy(update=updates) if updates else config
