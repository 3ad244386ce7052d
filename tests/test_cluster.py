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
    expected, _ = plain_pytorch_losses(config)
    assert [row["train/loss"] for row in read_metrics(tmp_path / "run")] == pytest.approx(expected, rel=1e-5)
    assert len(ray.nodes()) == 2
