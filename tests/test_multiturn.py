"""Multi-turn rollouts: tools in a separate process, token-in/token-out episodes on a real vLLM engine,
environment tokens out of the loss (float64), and environments checked before any engine starts."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from alignment.errors import AlignError
from alignment.ppo.batch import RolloutBatch
from alignment.ppo.config import PPOConfig
from rollout.config import EnvironmentConfig, SamplingConfig
from rollout.environment import StepResult
from rollout.tools import ToolEnvironment, calculator, close_runners, parse_tool_calls

HELPERS = "tests.environment_helpers"


def call(name: str, **arguments) -> str:
    import json

    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


@pytest.fixture()
def tools():
    yield
    close_runners()


# ---- tools ---------------------------------------------------------------------------------------


def test_the_calculator_is_exact_and_refuses_what_is_not_arithmetic():
    assert calculator("347 * 86") == "29842"
    assert calculator("(12 + 3) * -2 - 7 // 2") == "-33"
    assert calculator("7 / 2") == "3.5"
    assert calculator("2 ** 64") == "18446744073709551616" and calculator("6 / 3") == "2"
    for bad in ("__import__('os')", "x + 1", "2 ** 1000", "[1, 2]", ""):
        with pytest.raises((ValueError, SyntaxError)):
            calculator(bad)


def test_tool_calls_are_parsed_from_their_tags():
    assert parse_tool_calls('a <tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call> b') == (
        [{"name": "f", "arguments": {"x": 1}}], True)
    assert parse_tool_calls("<tool_call>not json</tool_call>") == (["not json"], True)
    assert parse_tool_calls('<tool_call>{"name": "f"') == ([], True)  # opened, never closed
    assert parse_tool_calls("<answer>3</answer>") == ([], False)


def test_a_tool_call_is_answered_and_a_turn_without_one_ends_the_episode(tools):
    env = ToolEnvironment(["calculator", f"{HELPERS}:add"])
    assert env.reset([{"role": "user", "content": "q"}], {}) is None
    result = env.step("let me see " + call("calculator", expression="347 * 86") + call("add", a=2, b=3))
    assert result.observation == [{"role": "tool", "content": "29842"}, {"role": "tool", "content": "5"}]
    assert not result.done and not result.failed and result.metrics["tool_calls"] == 2
    assert env.step("<answer>29842</answer>") == StepResult(reward=0.0, done=True)
    env.reset("a text prompt", {})
    assert env.step(call("add", a=1, b=1)).observation == "<tool_response>\n2\n</tool_response>\n"


@pytest.mark.parametrize(("action", "problem"), [
    ("<tool_call>{oops}</tool_call>", 'a tool call is a JSON object {"name": ..., "arguments": {...}}'),
    (call("search", q="x"), "unknown tool 'search'; tools: calculator, add"),
    (call("add", a=1), "missing a required argument: 'b'"),
    ('<tool_call>{"name": "add"', "the tool call is not closed with </tool_call>"),
])
def test_a_badly_written_call_gets_an_error_message_and_the_episode_goes_on(tools, action, problem):
    env = ToolEnvironment(["calculator", f"{HELPERS}:add"])
    env.reset([{"role": "user", "content": "q"}], {})
    result = env.step(action)
    assert not result.done and not result.failed and result.metrics["invalid_calls"] == 1
    assert result.observation[0]["role"] == "tool" and problem in result.observation[0]["content"]


@pytest.mark.parametrize(("tool", "counted", "said"), [
    ("raises", "tool_errors", "error: KeyError: 'q'"),
    ("hangs", "tool_timeouts", "timeout: no result within 2 s"),
    ("spins", "tool_timeouts", "timeout: no result within 2 s"),
    ("garbage", "tool_errors", "garbage: returned a object, not text or JSON data"),
    ("hog", "tool_errors", "error: MemoryError"),
])
def test_a_tool_that_raises_hangs_or_returns_garbage_fails_the_episode(tools, tool, counted, said):
    env = ToolEnvironment([f"{HELPERS}:{tool}", f"{HELPERS}:add"], timeout_s=2.0, memory_mb=512)
    env.reset([{"role": "user", "content": "q"}], {})
    started = time.perf_counter()
    result = env.step(call(tool, x="q"))
    assert result.done and result.failed and result.metrics[counted] == 1
    assert result.observation[0]["content"].startswith(said)
    assert time.perf_counter() - started < 15
    assert env.step(call("add", a=2, b=2)).observation[0]["content"] == "4"  # a fresh process after a hang


# ---- configs and checks before any engine --------------------------------------------------------


def job_config(tmp_path, **environment) -> PPOConfig:
    return PPOConfig.model_validate({
        "model": str(tmp_path), "output_dir": str(tmp_path / "out"), "data": {"train": str(tmp_path / "p.jsonl")},
        "reward": {"functions": ["math_answer"]}, "kl": {"coef": 0.0},
        "algorithm": {"advantage": "grpo", "prompts_per_step": 2, "mini_batch_size": 4},
        "train": {"micro_batch_size": 2}, "sampling": {"n": 2}, "cluster": {"num_workers": 1},
        "environment": environment})


@pytest.mark.parametrize(("environment", "message"), [
    ({"tools": ["nowhere.module:tool"]}, "environment.tools: 'nowhere.module:tool' cannot be imported"),
    ({"tools": ["websearch"]}, "unknown tool 'websearch': built-in tools are calculator"),
    ({"tools": []}, "the tools environment needs at least one tool"),
    ({"name": "maze"}, "unknown environment 'maze': built-in names are tools"),
    ({"name": f"{HELPERS}:Missing"}, "cannot be imported"),
    ({"name": f"{HELPERS}:NoStep"}, "must be a class with reset(prompt, row) and step(action) methods (missing: step)"),
    ({"name": f"{HELPERS}:UnbuildableEnvironment", "kwargs": {"size": 9}},
     "cannot be created with environment.kwargs={'size': 9}: ValueError: size 9 is too big"),
    ({"name": f"{HELPERS}:CountingEnvironment", "tools": ["calculator"]}, "is not a tools environment"),
])
def test_a_broken_environment_or_tool_spec_is_a_clear_error(tmp_path, environment, message):
    from alignment.ppo.trainer import environment_factory

    with pytest.raises(AlignError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        environment_factory(job_config(tmp_path, **environment))


def test_multi_turn_needs_a_sequence_estimator(tmp_path):
    with pytest.raises(ValueError, match="algorithm.advantage must be one of grpo, rloo"):
        PPOConfig.model_validate({**job_config(tmp_path, tools=["calculator"]).model_dump(),
                                  "algorithm": {"advantage": "gae", "mini_batch_size": 4, "prompts_per_step": 2}})


# ---- environment tokens get no loss --------------------------------------------------------------


def multiturn_batch(vocab: int, seed: int = 0) -> RolloutBatch:
    """Two episodes: policy tokens, then environment tokens, then policy tokens (ragged)."""
    generator = torch.Generator().manual_seed(seed)

    def ids(count):
        return torch.randint(3, vocab, (count,), generator=generator).tolist()

    masks = [[1, 1, 1, 0, 0, 0, 1, 1], [1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 1]]
    batch = RolloutBatch.from_samples(
        prompt_ids=[ids(5), ids(3)], response_ids=[ids(len(m)) for m in masks],
        rollout_logprobs=[[-1.0 * k for k in m] for m in masks], finished=[True, True], pad_id=0,
        policy_mask=masks)
    shape = batch.response_mask.shape
    batch.old_logprobs = -torch.rand(shape, generator=generator, dtype=torch.float64) * batch.response_mask
    batch.ref_logprobs = -torch.rand(shape, generator=generator, dtype=torch.float64) * batch.response_mask
    batch.advantages = torch.randn(shape, generator=generator, dtype=torch.float64) * batch.response_mask
    batch.scores = torch.tensor([1.0, 0.0])
    return batch


@pytest.mark.parametrize("aggregation", ["token", "sequence"])
def test_environment_tokens_get_no_gradient_no_kl_and_no_entropy(micro_model, aggregation):
    """The actor loss of the PPO worker on a multi-turn batch, in float64: the logits that predict
    environment tokens get exactly zero gradient, the loss and its metrics equal a recomputation over
    the policy's tokens alone, and changing anything at environment positions changes nothing."""
    from transformers import AutoModelForCausalLM

    from alignment.logprobs import token_logprobs
    from alignment.ppo.worker import PPOWorker

    model = AutoModelForCausalLM.from_pretrained(micro_model / "model", dtype=torch.float64)
    captured = {}

    def keep_logits(module, args, out):
        if out.requires_grad:
            out.retain_grad()
            captured["logits"] = out

    model.lm_head.register_forward_hook(keep_logits)
    worker = PPOWorker.__new__(PPOWorker)
    worker.config = PPOConfig.model_validate({
        **job_config(micro_model, tools=["calculator"]).model_dump(),
        "kl": {"coef": 0.1, "use_in": "loss", "estimator": "k3"},
        "algorithm": {"advantage": "grpo", "mini_batch_size": 4, "prompts_per_step": 2, "entropy_coef": 0.01}})
    worker.models = {"actor": SimpleNamespace(engine=model)}
    batch = multiturn_batch(model.config.vocab_size)
    loss, units, metrics = worker._actor_loss(batch, aggregation, 0.1)
    loss.backward()
    grad = captured["logits"].grad
    environment = (batch.response_mask - batch.loss_mask).bool()
    rows, columns = environment.nonzero(as_tuple=True)
    predicting = batch.positions[rows, columns]
    assert grad[rows, predicting].abs().max() == 0.0
    policy = batch.loss_mask.bool()
    rows_p, columns_p = policy.nonzero(as_tuple=True)
    assert grad[rows_p, batch.positions[rows_p, columns_p]].abs().sum(dim=-1).min() > 0

    # float64 recomputation over the policy's tokens only
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    targets = batch.input_ids.gather(1, batch.positions + 1)
    logp = token_logprobs(logits, targets, torch.arange(2)[:, None], batch.positions, 1.0)
    ratio = torch.exp(logp - batch.old_logprobs)
    pg = torch.maximum(-batch.advantages * ratio, -batch.advantages * ratio.clamp(0.8, 1.2))
    probs = torch.softmax(logits[torch.arange(2)[:, None], batch.positions], dim=-1)
    entropy = -(probs * probs.clamp_min(1e-300).log()).sum(-1)
    log_r = batch.ref_logprobs - logp
    k3 = torch.exp(log_r) - 1 - log_r
    per_token = (pg - 0.01 * entropy + 0.1 * k3) * batch.loss_mask
    if aggregation == "token":
        expected = per_token.sum()
    else:
        expected = (per_token.sum(1) / batch.loss_mask.sum(1)).sum()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-6, atol=1e-9)  # masks are float32
    assert metrics["tokens"] == float(batch.loss_mask.sum()) == 14
    torch.testing.assert_close(torch.tensor(metrics["entropy_tsum"], dtype=torch.float64),
                               (entropy * batch.loss_mask).sum(), rtol=1e-6, atol=1e-9)

    # anything at environment positions may change: the loss does not
    changed = multiturn_batch(model.config.vocab_size)
    for name in ("old_logprobs", "ref_logprobs", "advantages"):
        value = getattr(changed, name).clone()
        value[environment] = 50.0
        setattr(changed, name, value)
    again, _, _ = worker._actor_loss(changed, aggregation, 0.1)
    torch.testing.assert_close(again.detach(), loss.detach(), rtol=0, atol=0)


def test_kl_and_mismatch_metrics_of_the_experience_count_policy_tokens_only():
    from alignment.ppo.trainer import experience_targets

    batch = multiturn_batch(50)
    config = job_config_stub()
    logprobs = batch.old_logprobs.float()
    ref = batch.ref_logprobs.float()
    environment = (batch.response_mask - batch.loss_mask).bool()
    metrics, _ = experience_targets(config, 0.1, batch, logprobs, ref, None)
    wild = multiturn_batch(50)
    wild_ref, wild_logprobs = ref.clone(), logprobs.clone()
    wild_ref[environment], wild_logprobs[environment] = -30.0, -0.01
    wild.rollout_logprobs[environment] = 5.0
    again, _ = experience_targets(config, 0.1, wild, wild_logprobs, wild_ref, None)
    for key in ("kl/sequence", "kl/token_estimate", "rollout/mismatch", "train/response_length", "advantages/mean"):
        assert again[key] == pytest.approx(metrics[key], rel=1e-6), key
    policy = batch.loss_mask
    assert metrics["kl/sequence"] == pytest.approx(float(((logprobs - ref) * policy).sum(1).mean()), rel=1e-6)
    assert metrics["train/response_length"] == pytest.approx(14 / 2)
    assert (wild.advantages[environment] == 0).all()


def job_config_stub() -> PPOConfig:
    return PPOConfig.model_validate({
        "model": "m", "output_dir": "o", "data": {"train": "p.jsonl"}, "reward": {"functions": ["math_answer"]},
        "kl": {"coef": 0.1, "use_in": "loss", "estimator": "k3"},
        "algorithm": {"advantage": "grpo", "prompts_per_step": 1, "mini_batch_size": 2},
        "train": {"micro_batch_size": 2}, "sampling": {"n": 2}, "cluster": {"num_workers": 1},
        "environment": {"tools": ["calculator"]}})


# ---- episodes on a real engine -------------------------------------------------------------------


class RecordingEngines:
    """RolloutEngines as they are, with every generate call's prompts and results kept."""

    def __init__(self, engines):
        self.engines, self.calls = engines, []
        self.tokenizer = engines.tokenizer

    def generate(self, prompts, sampling):
        generations = self.engines.generate(prompts, sampling)
        self.calls.append(([list(p) for p in prompts], generations))
        return generations


@pytest.mark.parametrize("observation", [" [ok] ", [{"role": "tool", "content": "42"}]])
def test_episodes_keep_the_engines_tokens_and_append_rendered_observations(micro_model, ray_runtime, observation):
    """Two-turn episodes on the micro model in vLLM: the response is the engine's turn-1 ids, the
    observation's ids, the engine's turn-2 ids, exactly; the context of turn 2 is prompt + those; the
    trainer's recomputed log-probs agree with the engine's on policy tokens."""
    from alignment.ppo.worker import response_logprobs
    from rollout.config import RolloutConfig
    from rollout.engine import RolloutEngines
    from rollout.environment import environment_factory
    from rollout.multiturn import episode_metrics, render_observation, run_episodes

    engines = RolloutEngines(str(micro_model / "model"), RolloutConfig(max_model_len=128, kv_cache_mb=64, cpus_per_engine=2))
    try:
        recording = RecordingEngines(engines)
        prompts = [[{"role": "user", "content": "Review the film number 1."}], [{"role": "user", "content": "Hi."}]]
        from rollout.engine import encode_prompts

        ids = encode_prompts(engines.tokenizer, prompts, 128)
        config = EnvironmentConfig(name=f"{HELPERS}:CountingEnvironment", kwargs={"observation": observation},
                                   max_turns=3, max_total_tokens=60)
        make = environment_factory(config.name, config.kwargs)
        # a stop string every random text hits soon, so the random model's turns end by "stop"
        sampling = SamplingConfig(n=2, temperature=1.0, max_tokens=16, seed=3, stop=list("etaoinsrh"))
        episodes = run_episodes(recording, ids, prompts, [{}, {}], sampling, config, make)
    finally:
        engines.shutdown()
    observed = render_observation(engines.tokenizer, observation)
    assert len(episodes) == 4 and [(e.prompt_index, e.sample_index) for e in episodes] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    two_turns = [e for e in episodes if e.turns == 2 and e.finish_reason == "stop"]
    assert two_turns, [(e.turns, e.finish_reason) for e in episodes]
    first_prompts, first = recording.calls[0]
    assert first_prompts == [ids[0], ids[0], ids[1], ids[1]]
    for index, episode in enumerate(episodes):
        turn_one = first[index].token_ids
        assert episode.token_ids[: len(turn_one)] == turn_one and episode.logprobs[: len(turn_one)] == first[index].logprobs
        if episode in two_turns:
            second_prompts, second = recording.calls[1]
            position = [e for e in episodes if e.turns >= 2].index(episode)
            turn_two = second[position].token_ids
            assert second_prompts[position] == ids[episode.prompt_index] + turn_one + observed
            assert episode.token_ids == turn_one + observed + turn_two
            assert episode.policy_mask == [1] * len(turn_one) + [0] * len(observed) + [1] * len(turn_two)
            assert episode.reward == 2.0 and episode.metrics["steps"] == 2
            assert [m["role"] for m in episode.messages][:1] == ["assistant"]
    metrics = episode_metrics(episodes)
    assert metrics["env/turns"] == pytest.approx(sum(e.turns for e in episodes) / 4)

    batch = RolloutBatch.from_samples(
        prompt_ids=[ids[e.prompt_index] for e in episodes], response_ids=[e.token_ids for e in episodes],
        rollout_logprobs=[e.logprobs for e in episodes], finished=[True] * 4, pad_id=engines.tokenizer.pad_token_id,
        policy_mask=[e.policy_mask for e in episodes])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(micro_model / "model", dtype=torch.float32)
    with torch.no_grad():
        logprobs, _ = response_logprobs(model, batch, 1.0, entropy=None)
    policy = batch.loss_mask.bool()
    assert (logprobs[policy] - batch.rollout_logprobs[policy]).abs().max() < 2e-3
    assert (batch.rollout_logprobs[~policy] == 0).all()


# ---- the job: kill and resume --------------------------------------------------------------------


def multiturn_tree(micro_model, output_dir, **overrides) -> dict:
    """GRPO on the micro model in a two-turn environment (reward 1 per turn, plus the sentiment judge)."""
    from tests.conftest import with_overrides
    from tests.test_ppo import ppo_tree

    tree = ppo_tree(micro_model, output_dir)
    tree["reward"] = {"functions": ["sentiment_judge"]}
    tree["algorithm"] = {"advantage": "grpo", "prompts_per_step": 4, "mini_batch_size": 8}
    tree["kl"] = {"coef": 0.05, "use_in": "loss", "estimator": "k3"}
    tree["sampling"] = {"n": 2, "max_tokens": 12, "stop": list("etaoinsrh")}
    tree["environment"] = {"name": f"{HELPERS}:CountingEnvironment", "kwargs": {"observation": " [ok] ", "turns": 2},
                           "max_turns": 3, "max_total_tokens": 48}
    tree["train"].update({"max_steps": 4, "save_every": 2, "eval_every": 4})
    return with_overrides(tree, overrides)


@pytest.mark.slow
def test_a_killed_multi_turn_job_resumes_to_the_uninterrupted_run(micro_model, tmp_path):
    import subprocess

    from safetensors.torch import load_file

    from tests.conftest import ALIGN, REPO, read_metrics, resume_run, sigkill_after_checkpoint, subprocess_env

    straight = tmp_path / "straight"
    config = tmp_path / "straight.yaml"
    import yaml

    config.write_text(yaml.safe_dump(multiturn_tree(micro_model, straight)))
    result = subprocess.run([*ALIGN, "ppo", "--config", str(config)], cwd=REPO, env=subprocess_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_metrics(straight)
    steps = rows[1:]
    assert all(r["env/turns"] > 1.0 and r["env/env_tokens"] > 0 for r in steps), [r["env/turns"] for r in steps]
    assert all(r["reward/environment"] >= 1.0 for r in steps)
    assert {"eval/env_turns", "eval/env_tool_use", "env/seconds"} <= rows[-1].keys()
    assert all(r["rollout/mismatch"] < 1.05 for r in steps)  # policy tokens line up with the engine's
    assert "[environment]  [ok] " in (straight / "samples.log").read_text()

    killed = tmp_path / "killed"
    command = sigkill_after_checkpoint("ppo", multiturn_tree(micro_model, killed), killed, 2)
    assert "at step 2" in resume_run(command)
    expected, actual = load_file(straight / "final" / "model.safetensors"), load_file(killed / "final" / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-6, msg=name)
    again = read_metrics(killed)
    for key in ("env/turns", "reward/score", "policy/loss"):
        assert again[-1][key] == pytest.approx(rows[-1][key], rel=1e-4, abs=1e-6), key


def test_chat_prompts_advertise_the_tools_where_the_template_takes_them(micro_model, tmp_path):
    from alignment.models import load_tokenizer
    from alignment.ppo.trainer import advertised_tools
    from rollout.engine import encode_prompt

    config = job_config(tmp_path, tools=["calculator", f"{HELPERS}:add"])
    schemas = advertised_tools(config)
    assert [s["function"]["name"] for s in schemas] == ["calculator", "add"]
    assert schemas[0]["function"]["parameters"]["required"] == ["expression"]
    assert schemas[1]["function"]["parameters"]["properties"] == {"a": {"type": "integer"}, "b": {"type": "integer"}}
    template = tmp_path / "tools.jinja"
    template.write_text("{% if tools %}<|system|>{% for t in tools %}{{ t.function.name }};{% endfor %}<|end|>{% endif %}"
                        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}<|assistant|>")
    tokenizer = load_tokenizer(str(micro_model / "model"), str(template))
    prompt = [{"role": "user", "content": "What is 3 * 4?"}]
    advertised = tokenizer.decode(encode_prompt(tokenizer, prompt, schemas))
    assert advertised.startswith("<|system|>calculator;add;<|end|><|user|>")
    assert encode_prompt(tokenizer, prompt, None) == encode_prompt(tokenizer, prompt, [])
    plain = load_tokenizer(str(micro_model / "model"))  # the tiny template ignores tools
    assert encode_prompt(plain, prompt, schemas) == encode_prompt(plain, prompt)
    assert advertised_tools(job_config(tmp_path, tools=["calculator"], advertise_tools=False)) is None
