"""Verifiers: checks of a response that a program can make (a final answer, a format, unit tests).

Each returns a :class:`Verdict` (a score and the reason for it). A malformed response scores 0 with
a reason; no verifier raises on what a model wrote.

The code verifier runs the candidate in a separate ``python -I`` process with resource limits and a
wall-clock timeout, and replaces Python's socket and process-spawning functions before the candidate
runs. That guard is best effort, at the Python level: it stops code that uses the network or spawns
programs by accident, not a determined adversary (``ctypes`` or a raw syscall get around it, and code
in the same interpreter as the tests can forge their results). It is no kernel sandbox; run untrusted
code in a container without network as well.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Verdict:
    score: float
    reason: str


# --- final answers ----------------------------------------------------------------------------

ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
BOXED = "\\boxed{"


def extract_answer(text: Any) -> str | None:
    """The final answer of a response: the last ``<answer>...</answer>``, else the last ``\\boxed{...}``
    (braces balanced, so ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``), else None."""
    if not isinstance(text, str):
        return None
    tags = ANSWER_TAG.findall(text)
    if tags:
        return tags[-1].strip()
    start = text.rfind(BOXED)
    while start >= 0:
        inside = _balanced(text, start + len(BOXED))
        if inside is not None:
            return inside.strip()
        start = text.rfind(BOXED, 0, start)
    return None


def _balanced(text: str, start: int) -> str | None:
    """The text from ``start`` up to the brace that closes the one just before it, or None if none does."""
    depth = 1
    for index in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[start:index]
    return None


DECIMAL = re.compile(r"([+-]?)(\d+\.?\d*|\.\d+)(?:[eE]([+-]?\d{1,4}))?")
THOUSANDS = re.compile(r"[+-]?\d{1,3}(,\d{3})+(\.\d*)?")
LATEX_FRACTION = re.compile(r"([+-]?)\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
MAX_DIGITS = 4000  # below Python's int-from-string limit (4300); longer numbers compare as text


def parse_number(text: str) -> Fraction | None:
    """The exact value of an integer, decimal (``-1,234.5``, ``1e3``), fraction (``3/4``) or
    ``\\frac{3}{4}``, ignoring surrounding spaces and ``$``; None when ``text`` is not one of those."""
    text = text.strip().strip("$").strip().replace("\u2212", "-")
    if THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    latex = LATEX_FRACTION.fullmatch(text)
    if latex:
        text = f"{latex[1]}{latex[2]}/{latex[3]}"
    if len(text) > MAX_DIGITS:
        return None
    if text.count("/") == 1:
        numerator, denominator = (parse_number(part) for part in text.split("/"))
        if numerator is None or not denominator:
            return None
        return numerator / denominator
    match = DECIMAL.fullmatch(text)
    if not match:
        return None
    sign, digits, exponent = match.groups()
    whole, _, decimals = digits.partition(".")
    value = Fraction(int(whole + decimals or "0"), 10 ** len(decimals)) * Fraction(10) ** int(exponent or 0)
    return -value if sign == "-" else value


def normalize_text(text: str) -> str:
    return " ".join(text.split()).casefold()


def answers_equal(candidate: Any, reference: Any) -> bool:
    """Whether two answers are the same number (compared exactly, as fractions), else the same text
    after collapsing whitespace and case."""
    if candidate is None or reference is None:
        return False
    candidate, reference = str(candidate), str(reference)
    mine, theirs = parse_number(candidate), parse_number(reference)
    if mine is not None and theirs is not None:
        return mine == theirs
    return normalize_text(candidate) == normalize_text(reference)


def shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def math_answer_verdict(response: Any, answer: Any) -> Verdict:
    """1.0 when the response's final answer (:func:`extract_answer`) equals ``answer``, else 0.0."""
    if not isinstance(response, str):
        return Verdict(0.0, f"response is {type(response).__name__}, not text")
    if answer is None:
        return Verdict(0.0, "no reference answer")
    found = extract_answer(response)
    if found is None:
        return Verdict(0.0, "no answer tag")
    if not found:
        return Verdict(0.0, "empty answer")
    if answers_equal(found, answer):
        return Verdict(1.0, "correct")
    return Verdict(0.0, f"wrong answer {shorten(found)} (expected {shorten(str(answer))})")


def format_verdict(response: Any) -> Verdict:
    """1.0 when the response holds exactly one ``<answer>...</answer>`` and nothing but whitespace after it."""
    if not isinstance(response, str):
        return Verdict(0.0, f"response is {type(response).__name__}, not text")
    opened, closed = response.count("<answer>"), response.count("</answer>")
    if opened == closed == 0:
        return Verdict(0.0, "no answer tag")
    if opened != 1 or closed != 1 or not ANSWER_TAG.search(response):
        return Verdict(0.0, f"{opened} <answer> and {closed} </answer> tags (want one pair)")
    if not response.rstrip().endswith("</answer>"):
        return Verdict(0.0, "text after the answer tag")
    return Verdict(1.0, "one answer tag at the end")


# --- code against tests -------------------------------------------------------------------------

PYTHON_BLOCK = re.compile(r"```(?:python|py|python3)[^\S\n]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_code(response: str) -> str:
    """The last ```python fenced block of a response, else the whole response."""
    blocks = PYTHON_BLOCK.findall(response)
    return blocks[-1] if blocks else response


# Runs in the child (``python -I -c RUNNER fd memory_mb cpu_s``): reads {"code", "tests"} from stdin,
# limits itself, disables sockets and spawning, runs the code and then each test, and writes one JSON
# line per event to the report fd: {"stage": "compile"|"load", "error"}, {"test", "passed"}, {"stage": "done"}.
RUNNER = r"""
import json, os, resource, sys
report_fd, memory_mb, cpu_s = map(int, sys.argv[1:4])
payload = json.loads(sys.stdin.buffer.read())
dumps, write, exit_now = json.dumps, os.write, os._exit

def send(**fields):
    try:
        write(report_fd, (dumps(fields) + "\n").encode())
    except BaseException:
        exit_now(3)

def describe(error):
    try:
        message = str(error)
        return (type(error).__name__ + (": " + message if message else ""))[:300]
    except BaseException:
        return "unprintable exception"

def limit(kind, soft, hard):
    _, ceiling = resource.getrlimit(kind)
    if ceiling != resource.RLIM_INFINITY:
        soft, hard = min(soft, ceiling), min(hard, ceiling)
    resource.setrlimit(kind, (soft, hard))

limit(resource.RLIMIT_CPU, cpu_s, cpu_s + 1)
limit(resource.RLIMIT_AS, memory_mb * 2**20, memory_mb * 2**20)
limit(resource.RLIMIT_FSIZE, 16 * 2**20, 16 * 2**20)
limit(resource.RLIMIT_CORE, 0, 0)
limit(resource.RLIMIT_NPROC, 0, 0)

def disabled(*args, **kwargs):
    raise PermissionError("network and process creation are disabled in the code verifier")

import _socket, socket, subprocess
for module, names in [
    (socket, ["socket", "socketpair", "fromfd", "create_connection", "create_server", "getaddrinfo",
              "gethostbyname", "gethostbyname_ex", "gethostbyaddr"]),
    (_socket, ["socket", "socketpair", "getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr"]),
    (os, ["fork", "forkpty", "system", "popen", "posix_spawn", "posix_spawnp", "execv", "execve", "execl",
          "execle", "execlp", "execlpe", "execvp", "execvpe", "spawnv", "spawnve", "spawnl", "spawnle"]),
    (subprocess, ["Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"]),
]:
    for name in names:
        if hasattr(module, name):
            setattr(module, name, disabled)
sys.stdout = sys.stderr = open(os.devnull, "w")

namespace = {"__name__": "solution", "__builtins__": __builtins__}
try:
    code = compile(payload["code"], "<candidate>", "exec")
except BaseException as error:
    send(stage="compile", error=describe(error))
    exit_now(0)
try:
    exec(code, namespace)
except BaseException as error:
    namespace.clear()
    send(stage="load", error=describe(error))
    exit_now(0)
for index, test in enumerate(payload["tests"]):
    try:
        exec(compile(test, "<test %d>" % index, "exec"), namespace)
        send(test=index, passed=True)
    except BaseException as error:
        send(test=index, passed=False, error=describe(error))
send(stage="done")
exit_now(0)
"""

REPORT_LIMIT = 1 << 20  # bytes of report read back; more is drained and dropped
SIGNAL_REASONS = {signal.SIGXCPU: "CPU time limit", signal.SIGXFSZ: "file size limit (16 MiB)",
                  signal.SIGKILL: "killed (memory or time limit)", signal.SIGSEGV: "crashed (segmentation fault)"}


def code_tests_verdict(response: Any, tests: Any, timeout_s: float = 10.0, memory_mb: int = 512) -> Verdict:
    """The share of ``tests`` (Python statements such as ``"assert add(1, 2) == 3"``, each run on its
    own) that pass after the response's code (:func:`extract_code`) runs, in a separate process.

    Limits: ``timeout_s`` of wall-clock time (then the process group is killed; tests that passed before
    still count), about as much CPU time, ``memory_mb`` of address space, 16 MiB of written files, no
    child processes (not for root), no sockets. The candidate runs as module ``solution`` (its
    ``if __name__ == "__main__"`` block does not run), with stdin at EOF and its output discarded.
    """
    if not isinstance(response, str):
        return Verdict(0.0, f"response is {type(response).__name__}, not text")
    if isinstance(tests, str) or not isinstance(tests, Sequence) or not all(isinstance(t, str) for t in tests):
        return Verdict(0.0, "tests must be a list of Python statements (strings)")
    if not tests:
        return Verdict(0.0, "no tests")
    payload = json.dumps({"code": extract_code(response), "tests": list(tests)}).encode()
    events, status, timed_out = run_child(payload, timeout_s, memory_mb)
    return tests_verdict(events, len(tests), status, timed_out, timeout_s)


def run_child(payload: bytes, timeout_s: float, memory_mb: int) -> tuple[list[dict], int | None, bool]:
    """Run :data:`RUNNER` on ``payload``: its report events, exit status, and whether it timed out."""
    read_fd, write_fd = os.pipe()
    chunks: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(read_fd, chunks), daemon=True)
    reader.start()  # the write end closes below whatever happens, so the reader always ends
    with tempfile.TemporaryDirectory(prefix="align-verify-") as workdir:
        cwd = Path(workdir) / "cwd"
        cwd.mkdir()
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-c", RUNNER, str(write_fd), str(memory_mb), str(math.ceil(timeout_s) + 1)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd, env={},
                pass_fds=(write_fd,), start_new_session=True)
        finally:
            os.close(write_fd)
        timed_out = False
        try:
            process.communicate(payload, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # also whatever it left behind in its session
        process.wait()
        with contextlib.suppress(OSError):  # a write the timeout cut short
            process.stdin.close()
        reader.join(timeout=5)
    return _events(b"".join(chunks)), process.returncode, timed_out


def _drain(fd: int, chunks: list[bytes]) -> None:
    kept = 0
    with os.fdopen(fd, "rb", buffering=0) as source:
        while chunk := source.read(65536):
            if kept < REPORT_LIMIT:
                chunks.append(chunk[: REPORT_LIMIT - kept])
                kept += len(chunks[-1])


def _events(report: bytes) -> list[dict]:
    events = []
    for line in report.decode(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def tests_verdict(events: list[dict], total: int, status: int | None, timed_out: bool, timeout_s: float) -> Verdict:
    """The verdict from the child's report: passed / total, and why it stopped when it did not finish."""
    passed = len({e["test"] for e in events
                  if e.get("passed") is True and isinstance(e.get("test"), int) and 0 <= e["test"] < total})
    stages = {e.get("stage"): e for e in events if "stage" in e}
    so_far = f"{passed}/{total} tests passed"
    if "compile" in stages:
        return Verdict(0.0, f"syntax error: {shorten(str(stages['compile'].get('error')), 200)}")
    if "load" in stages:
        return Verdict(0.0, f"the code raised {shorten(str(stages['load'].get('error')), 200)}")
    if timed_out:
        return Verdict(passed / total, f"timed out after {timeout_s:g} s ({so_far} before)")
    if "done" not in stages:
        if status is not None and status < 0:
            why = SIGNAL_REASONS.get(-status, f"killed by signal {-status}")
        else:
            why = f"exited with status {status}"
        return Verdict(passed / total, f"{why} before the tests finished ({so_far})")
    failed = next((e for e in events if e.get("passed") is False), None)
    if failed is not None:
        so_far += f"; test {failed.get('test')} failed: {shorten(str(failed.get('error')), 120)}"
    return Verdict(passed / total, so_far)
