"""Pre-flight: pools that cannot be placed are refused at once, in one line naming the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.preflight import (
    ClusterTooSmallError,
    Node,
    Pool,
    best_effort_sizes,
    check_cluster,
    cluster_nodes,
    plan,
    stage_pools,
    with_pool_sizes,
)

ROOT = Path(__file__).resolve().parents[2]
DEMO_POOLS = [Pool("caption", 1, 0, 1), Pool("vae", 0.5, 0, 1), Pool("t5", 0.5, 0, 1)]
DEMO_TASKS = {"read": 1.0, "filter": 1.0, "write": 1.0}


def gpu_node(gpus: int, cpus: float = 32) -> Node:
    return Node(cpus, [1.0] * gpus)


def refusal(pools, nodes, tasks=DEMO_TASKS, **kwargs) -> str:
    with pytest.raises(ClusterTooSmallError) as error:
        plan(pools, tasks, nodes, **kwargs)
    return str(error.value)


def test_the_demo_fits_on_three_cpus_and_no_fewer():
    # Actors 1 + 0.5 + 0.5, plus one CPU for a read/filter/write task.
    assert plan(DEMO_POOLS, DEMO_TASKS, [Node(3)]) == {"caption": 1, "vae": 1, "t5": 1}
    assert refusal(DEMO_POOLS, [Node(2)], embedded=True) == (
        "the CPU tasks (read, filter, write) need 1 CPU beside the actor pools, "
        "the cluster has 2 (2 for caption 1, vae 0.5, t5 0.5): --set ray.num_cpus=3"
    )


def test_a_cluster_not_started_here_gets_no_ray_num_cpus_fix():
    assert refusal(DEMO_POOLS, [Node(2)]) == (
        "the CPU tasks (read, filter, write) need 1 CPU beside the actor pools, "
        "the cluster has 2 (2 for caption 1, vae 0.5, t5 0.5): "
        "no single --set fixes it: add nodes, or lower the pools' num_workers/num_cpus"
    )


def test_placement_is_per_node():
    # 3 CPUs in total, but no way to split caption 1 + vae 0.5 + t5 0.5 + a 1-CPU task over 1.25 and 1.75.
    assert refusal(DEMO_POOLS, [Node(1.25), Node(1.75)]).startswith(
        "the CPU tasks (read, filter, write) need 1 CPU beside the actor pools, "
        "the cluster has 3 (2 for caption 1, vae 0.5, t5 0.5), not in pieces that fit: "
    )
    assert plan(DEMO_POOLS, DEMO_TASKS, [Node(1.5), Node(1.5)]) == {"caption": 1, "vae": 1, "t5": 1}


def test_more_gpu_workers_than_gpus():
    assert refusal([Pool("caption", 1, 1, 8)], [gpu_node(4)]) == (
        "caption needs 8 GPUs (8 workers × 1), the cluster has 4: --set caption.resources.num_workers=4"
    )


def test_the_fix_leaves_room_for_the_other_pools():
    pools = [Pool("caption", 1, 1, 8), Pool("vae", 1, 1, 1)]
    assert refusal(pools, [gpu_node(4)]) == (
        "caption needs 8 GPUs (8 workers × 1), the cluster has 4 (1 for vae): --set caption.resources.num_workers=3"
    )


def test_gpus_on_a_cluster_without_gpus():
    assert refusal([Pool("caption", 1, 1, 1)], [Node(4)]) == (
        "caption needs 1 GPU (1 worker × 1), the cluster has none: --set caption.resources.num_gpus=0"
    )


def test_a_worker_larger_than_any_node():
    assert refusal([Pool("caption", 1, 2, 2)], [gpu_node(1), gpu_node(1)]) == (
        "caption needs 2 GPUs on one node per worker, the largest node has 1: --set caption.resources.num_gpus=1"
    )
    assert refusal([Pool("caption", 3, 0, 1)], [Node(2), Node(2)]) == (
        "caption needs 3 CPUs on one node per worker, the largest node has 2: --set caption.resources.num_cpus=2"
    )


def test_fractional_gpus_share_an_instance_only_while_it_has_room():
    # 0.6 + 0.6 + 0.6 = 1.8 of 2 GPUs, but no GPU instance holds two 0.6 shares.
    pools = [Pool("caption", 1, 0.6, 2), Pool("t5", 1, 0.6, 1)]
    assert refusal(pools, [gpu_node(2)]) == (
        "t5 needs 0.6 GPUs (1 worker × 0.6), the cluster has 2 (1.2 for caption), not in pieces that fit: "
        "--set caption.resources.num_workers=1"
    )
    assert plan([Pool("vae", 1, 0.5, 2)], DEMO_TASKS, [gpu_node(1)]) == {"vae": 2}


def test_another_pool_is_shrunk_when_the_failing_one_has_a_single_worker():
    # On the embedded 4-CPU Ray: 3 + 0.5 + 0.5 leaves nothing for the tasks; 2 caption workers do.
    pools = [Pool("caption", 1, 0, 3), Pool("vae", 0.5, 0, 1), Pool("t5", 0.5, 0, 1)]
    assert refusal(pools, [Node(4)], embedded=True) == (
        "the CPU tasks (read, filter, write) need 1 CPU beside the actor pools, "
        "the cluster has 4 (4 for caption 3, vae 0.5, t5 0.5): --set caption.resources.num_workers=2"
    )


def test_auto_pools_take_what_is_left():
    pools = [Pool("caption", 1, 1, "auto"), Pool("vae", 1, 0.5, 1), Pool("t5", 1, 0.5, 1)]
    # 8 GPUs; vae and t5 share one of them.
    assert plan(pools, DEMO_TASKS, [gpu_node(4, 16), gpu_node(4, 16)]) == {"vae": 1, "t5": 1, "caption": 7}
    # Two auto pools share in turn: 0.4 + 0.4 per GPU, twice.
    shared = [Pool("caption", 1, 0.4, "auto"), Pool("t5", 1, 0.4, "auto")]
    assert plan(shared, DEMO_TASKS, [gpu_node(2, 16)]) == {"caption": 2, "t5": 2}
    assert refusal([Pool("caption", 1, 1, "auto")], [Node(4)]) == (
        "caption needs 1 GPU (1 worker × 1), the cluster has none: --set caption.resources.num_gpus=0"
    )


def test_vllm_placement_groups():
    tensor_parallel = ({"CPU": 1, "GPU": 1}, {"GPU": 1})
    strict = Pool("caption", 0, 0, 1, bundles=tensor_parallel)
    assert refusal([strict], [gpu_node(1), gpu_node(1)]) == (
        "caption needs 2 GPUs on one node per worker, the largest node has 1: "
        "no single --set fixes it: add nodes, or lower the pools' num_workers/num_cpus"
    )
    packed = Pool("caption", 0, 0, 1, bundles=tensor_parallel, strategy="PACK")
    assert plan([packed], DEMO_TASKS, [gpu_node(1), gpu_node(1)]) == {"caption": 1}
    two = Pool("caption", 0, 0, 2, bundles=tensor_parallel)
    assert refusal([two], [gpu_node(2), gpu_node(1)]) == (
        "caption needs 4 GPUs (2 workers × 2), the cluster has 3: --set caption.resources.num_workers=1"
    )


def test_a_pool_without_a_setting_is_never_the_fix():
    # The collector takes the most CPUs, but no --set sizes it: the fix shrinks the caption pool.
    collector = Pool("caption collector", 1, 0, 2, setting="")
    assert refusal([collector, Pool("caption", 0.5, 0, 2)], [Node(3.5)]) == (
        "the CPU tasks (read, filter, write) need 1 CPU beside the actor pools, "
        "the cluster has 3.5 (3 for caption collector 2, caption 1): --set caption.resources.num_workers=1"
    )


def test_best_effort_sizes_when_waiting_for_an_autoscaler():
    pools = [Pool("caption", 1, 1, 8), Pool("t5", 1, 1, "auto")]
    assert best_effort_sizes(pools, [gpu_node(2)]) == {"caption": 8, "t5": 2}
    assert best_effort_sizes(pools, [Node(4)]) == {"caption": 8, "t5": 1}


def test_pools_of_the_demo_recipe():
    from curation.config import load_config
    from pipelines.t2i import stage_factories

    stages = [factory() for factory in stage_factories(load_config(ROOT / "configs/demo.yaml"))]
    pools, tasks = stage_pools(stages)
    assert sorted(pools, key=lambda p: p.name) == sorted(DEMO_POOLS, key=lambda p: p.name)
    assert tasks == DEMO_TASKS


def test_against_the_embedded_ray(ray_session):
    assert [(n.cpus, n.gpus) for n in cluster_nodes()] == [(4.0, [])]
    assert check_cluster(DEMO_POOLS, DEMO_TASKS, embedded=True) == {"caption": 1, "vae": 1, "t5": 1}
    with pytest.raises(ClusterTooSmallError) as error:
        check_cluster([Pool("caption", 1, 1, 1), *DEMO_POOLS[1:]], DEMO_TASKS, embedded=True)
    assert str(error.value) == (
        "caption needs 1 GPU (1 worker × 1), the cluster has none: --set caption.resources.num_gpus=0"
    )
    waived = check_cluster([Pool("caption", 1, 1, 2)], DEMO_TASKS, embedded=True, allow_autoscaling=True)
    assert waived == {"caption": 2}


def test_resolved_sizes_go_back_into_the_config():
    from curation.config import load_config

    config = load_config(ROOT / "configs/demo.yaml")
    resized = with_pool_sizes(config, {"caption": 3, "vae": 1, "caption collector": 1})
    assert resized.caption.resources.num_workers == 3
    assert resized.caption.resources.batch_size == config.caption.resources.batch_size
    assert resized.vae == config.vae and resized.t5 == config.t5


def test_the_vllm_backend_counts_its_engines_bundles_and_the_collector():
    from curation.config import CaptionConfig, ModelRef, Resources
    from pipelines.t2i import vllm_pool_stages

    caption = CaptionConfig(
        model=ModelRef(path="llava-hf/llava-1.5-7b-hf"), backend="vllm",
        resources=Resources(num_cpus=2, num_gpus=1, num_workers=2),
    )  # fmt: skip
    pools, _ = stage_pools(vllm_pool_stages(caption))
    engines, collector = pools
    assert engines.worker == ({"CPU": 2, "GPU": 1},) and engines.num_workers == 2
    assert (collector.per_worker("CPU"), collector.num_workers, collector.section) == (0.25, 1, "")
    # 2 engines × 2 CPUs + the collector + one CPU-task slot: 5.25 CPUs; 5 are not enough, and the
    # fix is never a setting of the collector
    assert plan(pools, DEMO_TASKS, [gpu_node(2, cpus=5.25)]) == {"caption": 2, "caption collector": 1}
    assert refusal(pools, [gpu_node(2, cpus=5)]).endswith("--set caption.resources.num_workers=1")
