"""Tool calling on top of :mod:`rollout.environment`: the policy calls Python functions and reads their results.

Tool calls are written as Hermes / Qwen chat templates write them, one JSON object per tag::

    <tool_call>{"name": "calculator", "arguments": {"expression": "347 * 86"}}</tool_call>

A turn with no ``<tool_call>`` ends the episode. Every call runs in a separate process (spawned once,
reused) with a wall-clock timeout and an address-space limit; its result comes back as a ``tool``
message (chat prompts) or as ``<tool_response>...</tool_response>`` text (text prompts).

A tool that raises, hangs past ``timeout_s`` or returns something that is not JSON data ends the
episode as failed (reward 0), counted as ``tool_errors`` / ``tool_timeouts``. A call the policy
wrote badly (not JSON, an unknown tool, wrong arguments) gets an error message as its result and the
episode goes on, counted as ``invalid_calls``.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import multiprocessing
import operator
import re
from collections.abc import Callable
from functools import cache
from typing import Any

from alignment.errors import AlignError
from rollout.environment import Environment, Observation, StepResult

TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
OPEN_TAG = "<tool_call>"
MAX_RESULT_CHARS = 2000


# ---- the bundled tool ---------------------------------------------------------------------

BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly.

    Args:
        expression: numbers with + - * / // % ** and parentheses, e.g. "347 * 86"
    """
    # Integers stay exact, an integral float is written as an integer; ValueError for what is not arithmetic.
    def value(node: ast.AST) -> int | float:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 64:
                raise ValueError("exponent too large")
            return BINARY[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
            return UNARY[type(node.op)](value(node.operand))
        raise ValueError(f"not arithmetic: {ast.dump(node)[:60]}")

    if not isinstance(expression, str) or len(expression) > 200:
        raise ValueError("expression must be text of at most 200 characters")
    result = value(ast.parse(expression.strip(), mode="eval").body)
    if isinstance(result, float) and result.is_integer() and abs(result) < 2**53:
        result = int(result)
    return str(result)


BUILTIN_TOOLS = {"calculator": "rollout.tools:calculator"}


# ---- specs and checks ---------------------------------------------------------------------

def resolve_tool(spec: str) -> Callable[..., Any]:
    """The function a tool spec names: a built-in name or ``module:function`` / ``module.function``."""
    path = BUILTIN_TOOLS.get(spec, spec)
    if ":" not in path and "." not in path:
        raise AlignError(f"environment.tools: unknown tool {spec!r}: built-in tools are {', '.join(sorted(BUILTIN_TOOLS))}; "
                         "otherwise give package.module:function")
    module_name, _, name = path.rpartition(":") if ":" in path else path.rpartition(".")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise AlignError(f"environment.tools: {spec!r} cannot be imported: {error}") from None
    if not callable(function):
        raise AlignError(f"environment.tools: {spec!r} is not a function")
    return function


def tool_name(spec: str) -> str:
    """The name the policy calls a tool by: the function's own name."""
    return BUILTIN_TOOLS.get(spec, spec).replace(":", ".").rsplit(".", 1)[-1]


def tool_schema(spec: str) -> dict[str, Any]:
    """The JSON schema a chat template advertises a tool by (``tools=`` of ``apply_chat_template``): from
    the function's type hints and its docstring's ``Args:`` section, or from its signature alone."""
    from transformers.utils import get_json_schema

    function = resolve_tool(spec)
    try:
        return get_json_schema(function)
    except Exception:  # noqa: BLE001 (no Google-style docstring or hints: describe the signature)
        names = list(inspect.signature(function).parameters.values())
        types = {int: "integer", float: "number", bool: "boolean", "int": "integer", "float": "number", "bool": "boolean"}
        return {"type": "function", "function": {
            "name": tool_name(spec), "description": (inspect.getdoc(function) or "").split("\n")[0],
            "parameters": {"type": "object",
                           "properties": {p.name: {"type": types.get(p.annotation, "string")} for p in names},
                           "required": [p.name for p in names if p.default is p.empty]}}}


def check_arguments(function: Callable[..., Any], arguments: Any) -> str | None:
    """Why ``arguments`` cannot be passed to ``function`` as keywords, or None when they can."""
    if not isinstance(arguments, dict):
        return "arguments must be a JSON object"
    try:
        inspect.signature(function).bind(**arguments)
    except TypeError as error:
        return str(error)
    except ValueError:  # no signature (some builtins): let the call decide
        return None
    return None


# ---- calls in a separate process ----------------------------------------------------------

def _limit_memory(memory_mb: int) -> None:
    import resource

    limit = memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@cache
def _tool_in_worker(spec: str) -> Callable[..., Any]:
    return resolve_tool(spec)


def _call_tool(spec: str, arguments: dict[str, Any]) -> tuple[str, str]:
    """Runs in the tool process: ("ok", result text) or ("error", what went wrong)."""
    try:
        result = _tool_in_worker(spec)(**arguments)
    except BaseException as error:  # noqa: BLE001 (a tool's failure is data, reported to the driver)
        return "error", f"{type(error).__name__}: {error}"[:500]
    if isinstance(result, str):
        return "ok", result
    try:
        return "ok", json.dumps(result) if not isinstance(result, bool | int | float) else str(result)
    except (TypeError, ValueError):
        return "garbage", f"returned a {type(result).__name__}, not text or JSON data"


class ToolRunner:
    """One spawned process that runs tool calls, restarted when a call hangs."""

    def __init__(self, timeout_s: float, memory_mb: int) -> None:
        self.timeout_s, self.memory_mb = timeout_s, memory_mb
        self.pool = None

    def call(self, spec: str, arguments: dict[str, Any]) -> tuple[str, str]:
        """("ok", text), ("error", message), ("garbage", message) or ("timeout", message)."""
        if self.pool is None:
            self.pool = multiprocessing.get_context("spawn").Pool(1, _limit_memory, (self.memory_mb,))
        handle = self.pool.apply_async(_call_tool, (spec, arguments))
        try:
            return handle.get(timeout=self.timeout_s)
        except multiprocessing.TimeoutError:
            self.close()
            return "timeout", f"no result within {self.timeout_s:g} s"
        except Exception as error:  # noqa: BLE001 (the result could not come back, e.g. not picklable)
            self.close()
            return "garbage", f"{type(error).__name__}: {error}"[:500]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


_RUNNERS: dict[tuple[float, int], ToolRunner] = {}


def runner_for(timeout_s: float, memory_mb: int) -> ToolRunner:
    """The job's tool process for these limits (every episode's environment shares it)."""
    key = (timeout_s, memory_mb)
    if key not in _RUNNERS:
        _RUNNERS[key] = ToolRunner(timeout_s, memory_mb)
    return _RUNNERS[key]


def close_runners() -> None:
    """Stop every tool process (the end of a job)."""
    for runner in _RUNNERS.values():
        runner.close()
    _RUNNERS.clear()


# ---- the environment ----------------------------------------------------------------------

def parse_tool_calls(text: str) -> tuple[list[Any], bool]:
    """The JSON of each ``<tool_call>`` in ``text`` (a string where it does not parse), and whether the
    text opens a tool call at all (an unclosed tag is a call the policy did not finish)."""
    calls: list[Any] = []
    for body in TOOL_CALL.findall(text):
        try:
            calls.append(json.loads(body))
        except ValueError:
            calls.append(body)
    return calls, OPEN_TAG in text


class ToolEnvironment(Environment):
    """The policy calls the ``tools`` by name; each result is appended as a tool message.

    ``tools``: specs (``calculator`` or ``module:function``), called with the call's JSON arguments as
    keywords; ``timeout_s`` / ``memory_mb``: limits of every call. Subclass it to add rewards (override
    :meth:`final_reward`).
    """

    def __init__(self, tools: list[str], timeout_s: float = 5.0, memory_mb: int = 1024) -> None:
        if not tools:
            raise AlignError("environment.tools: the tools environment needs at least one tool, e.g. [calculator]")
        self.functions = {}
        for spec in tools:
            name = tool_name(spec)
            if name in self.functions:
                raise AlignError(f"environment.tools: two tools are called {name!r}")
            self.functions[name] = (spec, resolve_tool(spec))
        self.runner = runner_for(timeout_s, memory_mb)
        self.chat = True

    def reset(self, prompt: Any, row: dict[str, Any]) -> Observation | None:
        self.chat = not isinstance(prompt, str)
        return None

    def final_reward(self) -> float:
        """The environment's reward when the policy answers without a tool call (0 here)."""
        return 0.0

    def step(self, action: str) -> StepResult:
        calls, opened = parse_tool_calls(action)
        if not opened:
            return StepResult(reward=self.final_reward(), done=True)
        metrics = {"tool_calls": float(len(calls)), "invalid_calls": 0.0, "tool_errors": 0.0, "tool_timeouts": 0.0}
        if not calls:
            metrics["invalid_calls"] = 1.0
            return StepResult(self.results(["error: the tool call is not closed with </tool_call>"]), metrics=metrics)
        results = []
        for call in calls:
            problem = self.invalid(call)
            if problem:
                metrics["invalid_calls"] += 1
                results.append(f"error: {problem}")
                continue
            spec, _ = self.functions[call["name"]]
            status, text = self.runner.call(spec, call.get("arguments", {}))
            if status != "ok":
                metrics["tool_timeouts" if status == "timeout" else "tool_errors"] += 1
                return StepResult(self.results([f"{status}: {text}"]), done=True, failed=True, metrics=metrics)
            results.append(text[:MAX_RESULT_CHARS])
        return StepResult(self.results(results), metrics=metrics)

    def invalid(self, call: Any) -> str | None:
        """Why the policy's call cannot be made, or None."""
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return 'a tool call is a JSON object {"name": ..., "arguments": {...}}'
        if call["name"] not in self.functions:
            return f"unknown tool {call['name']!r}; tools: {', '.join(self.functions)}"
        return check_arguments(self.functions[call["name"]][1], call.get("arguments", {}))

    def results(self, texts: list[str]) -> Observation:
        if self.chat:
            return [{"role": "tool", "content": text} for text in texts]
        return "".join(f"<tool_response>\n{text}\n</tool_response>\n" for text in texts)
