"""PPO: log-prob alignment, experience math against float64 loops, configs, reward functions,
and the real Ray + DeepSpeed + vLLM job on the micro model (first step, resume, crash, NaN)."""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import signal
import subprocess
import threading
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from alignment.checkpoint import CheckpointManager
from alignment.config import load_config
from alignment.errors import AlignError
from alignment.ppo.config import AlgorithmConfig, KLConfig, PPOConfig
from alignment.ppo.experience import compute_experience, pad
from tests.conftest import (
    ALIGN,
    REPO,
    kill_tree,
    read_metrics,
    subprocess_env,
    wait_for_checkpoint,
    with_overrides,
    write_jsonl,
)

# ---- log-probabilities of response tokens ------------------------------------------------------


def test_batched_response_logprobs_equal_a_float64_per_sample_recomputation(micro_model):
    from alignment.models import load_causal_lm
    from alignment.ppo.batch import RolloutBatch
    from alignment.ppo.worker import response_logprobs

    model = load_causal_lm(micro_model / "model").eval()
    generator = torch.Generator().manual_seed(0)
    samples = []
    for prompt_len, response_len in [(5, 7), (9, 2), (3, 11), (12, 1)]:
        ids = torch.randint(3, 300, (prompt_len + response_len,), generator=generator).tolist()
        samples.append({"ids": ids, "prompt_len": prompt_len})
    temperature = 0.7
    with torch.no_grad():
        batch = RolloutBatch.from_samples([s["ids"][: s["prompt_len"]] for s in samples],
                                          [s["ids"][s["prompt_len"] :] for s in samples],
                                          [[0.0] * (len(s["ids"]) - s["prompt_len"]) for s in samples],
                                          [True] * len(samples), pad_id=0)
        batched, entropy = response_logprobs(model, batch, temperature)
        model64 = model.double()
        for row, sample in enumerate(samples):
            ids = torch.tensor([sample["ids"]])
            logits = model64(input_ids=ids).logits[0] / temperature
            log_probs = torch.log_softmax(logits, dim=-1)
            expected = [log_probs[t - 1, sample["ids"][t]].item() for t in range(sample["prompt_len"], len(sample["ids"]))]
            got = batched[row, : len(expected)].tolist()
            assert got == pytest.approx(expected, abs=1e-5)
            expected_entropy = -(log_probs.exp() * log_probs).sum(-1)[sample["prompt_len"] - 1 : -1]
            assert entropy[row, : len(expected)].tolist() == pytest.approx(expected_entropy.tolist(), abs=1e-5)


# ---- experience ----------------------------------------------------------------------------------


def _random_batch(seed: int, rows: int = 6, width: int = 7):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (rows,), generator=generator).tolist()
    logprobs, mask = pad([(-torch.rand(n, generator=generator)).tolist() for n in lengths])
    ref = logprobs + 0.3 * torch.randn(logprobs.shape, generator=generator)
    values = torch.randn(logprobs.shape, generator=generator)
    scores = torch.randn(rows, generator=generator)
    return lengths, logprobs * mask, ref * mask, values * mask, scores, mask


def test_gae_experience_with_kl_in_reward_equals_a_float64_loop():
    lengths, logprobs, ref, values, scores, mask = _random_batch(1)
    coef, gamma, lam = 0.1, 0.99, 0.9
    algorithm = AlgorithmConfig(advantage="gae", gamma=gamma, lam=lam, whiten_advantages=False)
    exp = compute_experience(algorithm, KLConfig(coef=coef, estimator="k1"), coef, scores, logprobs, mask, ref, values, 2)
    for row, n in enumerate(lengths):
        lp, rf, v = logprobs[row].double(), ref[row].double(), values[row].double()
        rewards = [-coef * float(lp[t] - rf[t]) for t in range(n)]
        rewards[-1] += float(scores[row])
        advantage, expected = 0.0, [0.0] * n
        for t in reversed(range(n)):
            next_value = float(v[t + 1]) if t + 1 < n else 0.0
            advantage = rewards[t] + gamma * next_value - float(v[t]) + gamma * lam * advantage
            expected[t] = advantage
        assert exp.advantages[row, :n].tolist() == pytest.approx(expected, abs=1e-5)
        assert exp.returns[row, :n].tolist() == pytest.approx([a + float(v[t]) for t, a in enumerate(expected)], abs=1e-5)
        assert exp.advantages[row, n:].abs().sum() == 0


def test_group_experience_penalises_kl_per_sequence_or_leaves_it_to_the_loss():
    lengths, logprobs, ref, _, scores, mask = _random_batch(2, rows=6)
    coef = 0.2
    in_loss = compute_experience(AlgorithmConfig(advantage="grpo"), KLConfig(coef=coef, use_in="loss"), coef,
                                 scores, logprobs, mask, ref, None, group_size=3)
    in_reward = compute_experience(AlgorithmConfig(advantage="rloo", whiten_advantages=False),
                                   KLConfig(coef=coef, use_in="reward"), coef, scores, logprobs, mask, ref, None, group_size=3)
    penalised = [float(scores[i]) - coef * float((logprobs[i] - ref[i])[: lengths[i]].sum()) for i in range(6)]
    for start in (0, 3):
        group = scores[start : start + 3].double()
        grpo = ((group - group.mean()) / (group.std() + 1e-6)).tolist()
        rloo = [penalised[start + i] - (sum(penalised[start : start + 3]) - penalised[start + i]) / 2 for i in range(3)]
        for i in range(3):
            row, n = start + i, lengths[start + i]
            assert in_loss.advantages[row, :n].tolist() == pytest.approx([grpo[i]] * n, abs=1e-5)
            assert in_reward.advantages[row, :n].tolist() == pytest.approx([rloo[i]] * n, abs=1e-5)


# ---- configs and inputs ----------------------------------------------------------------------------


def ppo_tree(micro_model: Path, output_dir: Path, **overrides) -> dict:
    """2 steps of 4 prompts x 2 samples on the micro model; reward = sentiment judge + a random-head reward model."""
    prompts = [{"prompt": [{"role": "user", "content": f"Review the film number {i}."}]} for i in range(16)]
    write_jsonl(micro_model / "ppo_prompts.jsonl", prompts)
    tree = {
        "model": str(micro_model / "model"),
        "output_dir": str(output_dir),
        "data": {"train": str(micro_model / "ppo_prompts.jsonl"), "eval": str(micro_model / "ppo_prompts.jsonl"),
                 "max_eval_prompts": 4},
        "reward": {"model": str(micro_model / "model"), "functions": ["reward.functions:sentiment_judge"],
                   "gold": "reward.functions:sentiment_judge", "max_length": 96},
        "kl": {"coef": 0.05},
        "algorithm": {"advantage": "gae", "prompts_per_step": 4, "mini_batch_size": 8, "ppo_epochs": 1},
        "train": {"max_steps": 2, "micro_batch_size": 2, "eval_every": 2, "save_every": 2, "eval_samples": 1,
                  "keep_checkpoints": 3},
        "sampling": {"n": 2, "max_tokens": 16},
        "rollout": {"num_engines": 1, "cpus_per_engine": 2, "max_model_len": 128, "kv_cache_mb": 64},
        "optim": {"lr": 1e-3, "scheduler": "constant"},
        "critic_optim": {"lr": 1e-3, "scheduler": "constant"},
        "strategy": {"zero_stage": 2, "timeout_minutes": 3},
        "tracking": {"progress": False, "tensorboard": False},
    }
    return with_overrides(tree, overrides)


@pytest.mark.parametrize(("override", "message"), [
    (["algorithm.mini_batch_size=3"], "multiple of algorithm.mini_batch_size"),
    (["algorithm.advantage=grpo", "sampling.n=1", "algorithm.mini_batch_size=4"], "sampling.n must be at least 2"),
    (["sampling.top_p=0.9"], "sampling.top_p must be 1"),
    (["reward.model=null", "reward.functions=[]"], "set reward.model and/or reward.functions"),
    (["kl.estimator=k4"], "'k1', 'k2' or 'k3'"),
    (["rollout.lora_sync=adapter"], "rollout.lora_sync=adapter sends the actor's LoRA adapter to vLLM: it needs a `lora` section"),
    (["rollout.lora_sync=adapter", "lora.rank=4", "rollout.backend=hf"], "and rollout.backend=vllm (got lora=set, backend=hf)"),
    (["rollout.lora_sync=both"], "'merged' or 'adapter'"),
])
def test_bad_configs_name_the_key(micro_model, tmp_path, override, message):
    path = tmp_path / "ppo.yaml"
    path.write_text(yaml.safe_dump(ppo_tree(micro_model, tmp_path / "out")))
    with pytest.raises(AlignError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(PPOConfig, path, override)


def test_colocation_layout_follows_the_roles_in_use(micro_model, tmp_path):
    config = PPOConfig.model_validate(ppo_tree(micro_model, tmp_path, colocate=[["actor", "critic"]]))
    assert config.groups() == [["actor", "critic"], ["reference"], ["reward"]]
    grpo = PPOConfig.model_validate(ppo_tree(micro_model, tmp_path, algorithm__advantage="grpo", kl__coef=0.0))
    assert grpo.roles == ["actor", "reward"] and grpo.groups() == [["actor", "reward"]]


def test_prompt_rows_are_checked_with_file_and_line(micro_model, tmp_path):
    from alignment.models import load_tokenizer
    from alignment.ppo.trainer import load_prompts

    tokenizer = load_tokenizer(micro_model / "model")
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "fine"}, {"text": "no prompt field"}])
    with pytest.raises(AlignError, match=r"p.jsonl:2: no prompt under 'prompt'"):
        load_prompts(str(path), "prompt", tokenizer, room=8, max_model_len=64)
    path = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "word " * 80}])
    with pytest.raises(AlignError, match=r"q.jsonl:1: prompt has \d+ tokens; with sampling.max_tokens=8"):
        load_prompts(str(path), "prompt", tokenizer, room=8, max_model_len=64)


def test_reward_functions_by_dotted_path_and_http_endpoint():
    from reward.functions import load_reward_function

    by_colon = load_reward_function("tests.reward_helpers:prompt_length_reward")
    assert by_colon(["xy", "z"], ["abcd", "e"]) == [len("xy") - 4, 0]  # called as (prompts, responses)
    assert load_reward_function("reward.functions.sentiment_judge")([], ["I loved it"])[0] > 0.5
    with pytest.raises(AlignError, match="cannot be imported"):
        load_reward_function("reward.functions:no_such_function")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            answer = json.dumps({"rewards": [float(len(r)) for r in body["responses"][:2]]}).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        remote = load_reward_function(f"http://127.0.0.1:{server.server_port}/score")
        assert remote(["p", "q"], ["ab", "abcd"]) == [2.0, 4.0]
        with pytest.raises(AlignError, match="returned 2 scores for 3 responses"):
            remote(["p", "q", "r"], ["ab", "abcd", "x"])
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(AlignError, match="reward endpoint .* failed"):
        load_reward_function(f"http://127.0.0.1:{server.server_port}/gone")(["p"], ["x"])


# ---- the real job on the micro model ---------------------------------------------------------------

STEPS = 4


def write_config(micro_model: Path, output_dir: Path, **overrides) -> Path:
    path = output_dir.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(ppo_tree(micro_model, output_dir, **overrides)))
    return path


def run_align(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*ALIGN, "ppo", *args], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def straight_run(micro_model, tmp_path_factory) -> Path:
    """4 uninterrupted PPO steps (checkpoints at 2 and 4), through the CLI."""
    output = tmp_path_factory.mktemp("ppo") / "straight"
    overrides = {"train__max_steps": STEPS, "train__save_every": 2}
    result = run_align("--config", str(write_config(micro_model, output, **overrides)))
    assert result.returncode == 0, result.stderr[-3000:]
    return output


@pytest.mark.slow
def test_first_step_has_zero_kl_unit_ratio_and_agreeing_logprobs(straight_run):
    rows = read_metrics(straight_run)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert {"eval/gold", "eval/score", "eval/length"} <= rows[0].keys()
    first = rows[1]
    assert first["kl/sequence"] == 0.0 and first["kl/token_estimate"] == 0.0
    assert first["policy/ratio"] == pytest.approx(1.0, abs=1e-5)  # one minibatch: nothing updated before it
    assert first["policy/clip_frac"] == 0.0
    assert first["rollout/mismatch"] < 1.05
    for key in ("reward/score", "reward/model", "reward/gold", "reward/reward.functions:sentiment_judge",
                "policy/entropy", "policy/approx_kl", "critic/loss", "critic/explained_variance", "response/length",
                "response/eos_fraction", "time/generate_s", "time/experience_s", "time/train_s", "time/sync_s",
                "time/samples_per_s", "sync/load_s"):
        assert key in first, key
    assert rows[-1]["kl/sequence"] != 0.0  # the policy moved away from the reference
    assert "--- step 4" in (straight_run / "samples.log").read_text()

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(straight_run / "final")
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.isfinite().all()


@pytest.mark.slow
def test_a_killed_worker_ends_the_job_clearly_and_resume_gives_the_uninterrupted_run(straight_run, micro_model, tmp_path):
    """SIGKILL one PPOWorker after checkpoint 2: the driver exits 2 naming the group, the checkpoint is
    intact, and ``--resume`` from it ends with the uninterrupted run's weights and metrics."""
    output = tmp_path / "killed"
    config = write_config(micro_model, output, train__max_steps=STEPS, train__save_every=2)
    process = subprocess.Popen([*ALIGN, "ppo", "--config", str(config)], cwd=REPO, env=subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    manager = CheckpointManager(output)
    try:
        wait_for_checkpoint(process, output, 2)
        workers = [p for p in psutil.Process(process.pid).children(recursive=True)
                   if "PPOWorker" in " ".join(p.cmdline())]
        assert len(workers) == 2, [p.cmdline() for p in psutil.Process(process.pid).children(recursive=True)]
        workers[1].send_signal(signal.SIGKILL)
        _, stderr = process.communicate(timeout=180)
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            kill_tree(process)
    errors = [line for line in stderr.decode().splitlines() if line.startswith("error:")]
    assert process.returncode == 2 and errors, stderr.decode()[-3000:]
    assert "a worker of group 'actor+critic+reference+reward' died" in errors[-1], errors
    assert manager.load_state(manager.latest())["step"] == 2 and not (output / "final").exists()

    resumed = run_align("--config", str(config), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at step 2" in resumed.stdout
    expected = load_file(straight_run / "final" / "model.safetensors")
    actual = load_file(output / "final" / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-6, msg=name)
    straight_rows, resumed_rows = read_metrics(straight_run), read_metrics(output)
    assert [r["step"] for r in resumed_rows] == [0, 1, 2, 3, 4]
    for key in ("reward/score", "kl/sequence", "policy/loss", "critic/loss"):
        assert resumed_rows[-1][key] == pytest.approx(straight_rows[-1][key], rel=1e-4, abs=1e-6), key


@pytest.mark.slow
def test_grpo_in_separate_groups_then_a_nan_loss_stops_without_touching_the_last_checkpoint(micro_model, tmp_path):
    """GRPO with every role in its own group, its forwards in prompt-shared rows, starts like the colocated job
    (KL 0, ratio 1, the trainer's log-probs agreeing with vLLM's); once a reward function turns NaN after
    checkpoint 2, the job stops with a message and leaves that checkpoint as it was."""
    output, flag = tmp_path / "grpo", tmp_path / "nan.flag"
    config = write_config(micro_model, output, colocate=[], algorithm__advantage="grpo", kl__use_in="loss",
                          kl__estimator="k3", train__max_steps=STEPS, train__save_every=2, train__share_prompts=True,
                          reward__functions=["reward.functions:sentiment_judge", "tests.reward_helpers:nan_once_flagged"])
    process = subprocess.Popen([*ALIGN, "ppo", "--config", str(config)], cwd=REPO,
                               env={**subprocess_env(), "NAN_REWARD_FLAG": str(flag)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    manager = CheckpointManager(output)
    try:
        wait_for_checkpoint(process, output, 2)
        latest = manager.latest()
        before = {p: p.stat().st_mtime_ns for p in latest.rglob("*") if p.is_file()}
        flag.touch()
        stdout, stderr = process.communicate(timeout=300)
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            kill_tree(process)
    assert process.returncode == 2, stderr.decode()[-3000:]
    assert "groups [actor] x2, [reference] x2, [reward] x2" in stdout.decode()
    assert re.search(r"loss is nan at step [34]; stopping without saving", stderr.decode()), stderr.decode()[-3000:]
    assert manager.latest() == latest and latest.name == f"step_{2:08d}" and not (output / "final").exists()
    assert {p: p.stat().st_mtime_ns for p in latest.rglob("*") if p.is_file()} == before
    rows = read_metrics(output)
    assert rows[1]["kl/sequence"] == 0.0 and rows[1]["policy/ratio"] == pytest.approx(1.0, abs=1e-5)
    assert rows[1]["rollout/mismatch"] < 1.05
    assert "critic/loss" not in rows[1] and rows[-1]["step"] >= 2


def test_worker_forwards_group_samples_by_length_and_returns_them_in_order():
    from alignment.ppo.worker import PPOWorker, length_chunks

    samples = [[7] * n for n in (5, 40, 7, 33, 6, 21, 12, 28, 3)]
    chunks: list[list[int]] = []

    def outputs(indices: list[int]) -> list[int]:
        chunk = [samples[i] for i in indices]
        chunks.append([len(s) for s in chunk])
        return [len(s) for s in chunk]

    results = PPOWorker._in_sample_order(len(samples), length_chunks([len(s) for s in samples], 4), outputs)
    assert results == [len(s) for s in samples]
    assert chunks == [[3, 5, 6, 7], [12, 21, 28, 33], [40]]
