"""ActorGroup placement: one group spread over a two-node Ray cluster trains like a single node."""

from __future__ import annotations

import pytest

from alignment.cluster.group import ActorGroup, DistributedWorker
from alignment.config import ClusterConfig
from alignment.errors import AlignError
from alignment.sft import run_sft
from tests.conftest import read_metrics, sft_config
from tests.test_sft import plain_pytorch_losses


@pytest.fixture
def two_node_cluster():
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # leave the session's single-node runtime; later tests start it again
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 128 * 2**20})
    cluster.add_node(num_cpus=1, object_store_memory=128 * 2**20)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()
    from alignment.cluster.runtime import start_ray

    start_ray(ClusterConfig())  # back to the session's single-node runtime for the tests after this one


@pytest.mark.slow
def test_group_spread_over_two_nodes_trains_like_one_process(two_node_cluster, micro_model, tmp_path):
    import ray

    from alignment.cluster.runtime import start_ray

    spread = ClusterConfig(address=two_node_cluster.address, num_workers=2, spread_nodes=True)
    start_ray(spread)
    group = ActorGroup(DistributedWorker, spread, name="probe")
    assert len(set(group.node_ids())) == 2, "STRICT_SPREAD must put the ranks on different nodes"
    group.shutdown()

    with pytest.raises(AlignError, match="could not place 3 workers"):
        ActorGroup(DistributedWorker, spread.model_copy(update={"num_workers": 3, "placement_timeout_s": 5}), name="too-big")

    config = sft_config(micro_model, tmp_path / "run", cluster__address=two_node_cluster.address,
                        cluster__spread_nodes=True, strategy__zero_stage=3, train__max_steps=4)
    run_sft(config)
    expected, _, _ = plain_pytorch_losses(config)
    assert [row["train/loss"] for row in read_metrics(tmp_path / "run")] == pytest.approx(expected, rel=1e-5)
    assert len(ray.nodes()) == 2


@pytest.mark.slow
def test_a_later_job_in_the_same_process_gets_the_cpus_it_asks_for(ray_runtime, micro_model, tmp_path):
    """`align demo`'s situation: a training job starts Ray sized for itself, then a job that needs more
    logical CPUs (here one engine wanting more than this machine's cores) runs in the same process."""
    import os

    import ray

    from alignment.cluster.runtime import start_ray, stop_ray
    from alignment.generation import GenerateConfig, generate_to_file

    stop_ray()
    config = sft_config(micro_model, tmp_path / "sft", train__max_steps=1, train__eval_every=1, train__save_every=1)
    final = run_sft(config)
    assert ray.cluster_resources()["CPU"] == max(os.cpu_count(), 2)

    wanted = os.cpu_count() + 1
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(f'{{"prompt": "Review film {i}."}}\n' for i in range(3)))
    generate_to_file(GenerateConfig(
        checkpoints=[str(final)], prompts=str(prompts), output=str(tmp_path / "out.jsonl"), progress=False,
        rollout={"backend": "hf", "num_engines": 1, "cpus_per_engine": wanted, "start_timeout_s": 120},
        sampling={"n": 1, "max_tokens": 4, "seed": 0}))
    assert ray.cluster_resources()["CPU"] >= wanted
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 3

    # A runtime whose actors are still running is never restarted under them: a clear error instead.
    group = ActorGroup(DistributedWorker, ClusterConfig(), name="still-running")
    try:
        with pytest.raises(AlignError, match="still running"):
            start_ray(ClusterConfig(), cpus=wanted + 1)
    finally:
        group.shutdown()
