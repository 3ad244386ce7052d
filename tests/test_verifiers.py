"""Verifiers (answers, format, code run against tests) and reward functions that read dataset columns."""

from __future__ import annotations

import time

import pytest

from alignment.errors import AlignError
from reward.functions import check_columns, load_reward_function, required_columns
from reward.verifiers import (
    Verdict,
    answers_equal,
    code_tests_verdict,
    extract_answer,
    format_verdict,
    math_answer_verdict,
)

# --- final answers -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("37 + 48 = 85. 85 - 19 = 66. <answer>66</answer>", "66"),
    ("<answer> -12 </answer>", "-12"),
    ("first <answer>1</answer>, then <answer>2</answer> and a coda", "2"),
    ("so the result is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("\\boxed{3} no, \\boxed{4}", "4"),
    ("\\boxed{3} and an unclosed \\boxed{4", "3"),
    ("<answer>7</answer> even with \\boxed{8}", "7"),
    ("<answer>\n1,000\n</answer>", "1,000"),
    ("no answer here", None),
    ("<answer>5", None),
    ("", None),
    (None, None),
    (42, None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(("candidate", "reference"), [
    ("66", 66), ("-7", "-7"), ("+5", "5"), ("1,000", "1000"), ("1,234,567.5", "1234567.5"), ("0.5", "1/2"),
    ("3/4", "0.75"), (" $12$ ", "12"), ("\\frac{1}{2}", "0.5"), ("-\\frac{3}{4}", "-0.75"), ("66.", "66"),
    ("1e3", "1000"), (".25", "1/4"), ("2.50", "2.5"), (str(10**400), str(10**400)), ("\u22123", "-3"),
    ("Paris", "  paris "), ("New  York", "new york"),
])
def test_answers_equal(candidate, reference):
    assert answers_equal(candidate, reference)


@pytest.mark.parametrize(("candidate", "reference"), [
    ("65", "66"), ("-66", "66"), ("1,00", "100"), ("0.3333", "1/3"), (str(10**400), str(10**400 + 1)),
    ("1" + "0" * 5000, "1" + "0" * 4999 + "1"), ("1/0", "0"), ("abc", "abd"), ("", "0"), (None, "1"), ("1", None),
    ("0.1", "0.10000000000000001"),
])
def test_answers_differ(candidate, reference):
    assert not answers_equal(candidate, reference)


@pytest.mark.parametrize(("response", "answer", "verdict"), [
    ("37 + 48 = 85. 85 - 19 = 66. <answer>66</answer>", 66, Verdict(1.0, "correct")),
    ("<answer>65</answer>", "66", Verdict(0.0, "wrong answer 65 (expected 66)")),
    ("the answer is 66", "66", Verdict(0.0, "no answer tag")),
    ("<answer>  </answer>", "66", Verdict(0.0, "empty answer")),
    ("", "66", Verdict(0.0, "no answer tag")),
    (None, "66", Verdict(0.0, "response is NoneType, not text")),
    ("<answer>66</answer>", None, Verdict(0.0, "no reference answer")),
    ("\x00\xff<<answer>>>garbage</answer", "66", Verdict(0.0, "no answer tag")),
])
def test_math_answer_verdict(response, answer, verdict):
    assert math_answer_verdict(response, answer) == verdict


@pytest.mark.parametrize(("response", "score"), [
    ("85 - 19 = 66. <answer>66</answer>", 1.0), ("<answer>66</answer>\n  ", 1.0),
    ("<answer>66</answer> because", 0.0), ("<answer>1</answer><answer>2</answer>", 0.0), ("66", 0.0),
    ("<answer>66", 0.0), ("</answer>66<answer>", 0.0), ("", 0.0), (None, 0.0),
])
def test_format_verdict(response, score):
    verdict = format_verdict(response)
    assert verdict.score == score
    assert verdict.reason


# --- code against tests --------------------------------------------------------------------------

ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4", "assert add(0, 0) == 0"]


def test_a_passing_solution_in_a_fenced_block_scores_one():
    response = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nprint(add) is not run."
    assert code_tests_verdict(response, ADD_TESTS) == Verdict(1.0, "4/4 tests passed")


def test_each_test_runs_on_its_own():
    verdict = code_tests_verdict("def add(a, b):\n    return a + b if a >= 0 else 99", ADD_TESTS)
    assert verdict.score == 0.75
    assert verdict.reason == "3/4 tests passed; test 1 failed: AssertionError"


def test_an_infinite_loop_is_killed_within_its_timeout():
    started = time.perf_counter()
    verdict = code_tests_verdict("def add(a, b):\n    while True:\n        pass", ADD_TESTS, timeout_s=2)
    assert time.perf_counter() - started < 2 + 5
    assert verdict == Verdict(0.0, "timed out after 2 s (0/4 tests passed before)")


def test_tests_that_passed_before_a_hang_still_count():
    code = "def add(a, b):\n    while a == 2:\n        pass\n    return a + b"
    assert code_tests_verdict(code, ADD_TESTS, timeout_s=2).score == 0.5


@pytest.mark.parametrize("code", ["x = bytearray(10**11)\ndef add(a, b): return a + b",
                                  "x = []\nwhile True:\n    x.append(' ' * 10**6)"])
def test_a_memory_hog_fails_within_its_limit(code):
    started = time.perf_counter()
    verdict = code_tests_verdict(code, ADD_TESTS, timeout_s=20, memory_mb=256)
    assert verdict == Verdict(0.0, "the code raised MemoryError")
    assert time.perf_counter() - started < 15


def test_a_memory_hog_inside_a_test_fails_that_test_only():
    code = "def add(a, b):\n    if a == 2:\n        return len(bytearray(10**11))\n    return a + b"
    assert code_tests_verdict(code, ADD_TESTS, memory_mb=256).score == 0.75


@pytest.mark.parametrize(("code", "reason"), [
    ("def add(a, b:\n    return a + b", "syntax error: SyntaxError: "),
    ("import sys\ndef add(a, b): return a + b\nsys.exit()", "the code raised SystemExit"),
    ("import os\ndef add(a, b): return a + b\nos._exit(0)", "exited with status 0 before the tests finished (0/4"),
    ("def add(a, b): return a + b\nraise ValueError('nope')", "the code raised ValueError: nope"),
    ("Sure! The function adds two numbers.", "syntax error"),
    ("", "0/4 tests passed; test 0 failed: NameError"),
])
def test_broken_code_scores_zero_with_a_reason(code, reason):
    verdict = code_tests_verdict(code, ADD_TESTS)
    assert verdict.score == 0.0
    assert verdict.reason.startswith(reason), verdict.reason


def test_printing_junk_does_not_disturb_the_report():
    code = "import sys\nprint('{\"test\": 0, \"passed\": true}' * 10**5)\nsys.stderr.write('x' * 10**6)\ndef add(a, b): return 0"
    assert code_tests_verdict(code, ADD_TESTS) == Verdict(0.5, "2/4 tests passed; test 0 failed: AssertionError")


def test_sockets_and_processes_are_refused():
    code = ("import socket, _socket, os, subprocess\n"
            "def refused(make):\n"
            "    try:\n        make()\n    except PermissionError:\n        return True\n    return False\n")
    tests = ["assert refused(lambda: socket.socket())", "assert refused(lambda: _socket.socket())",
             "assert refused(lambda: socket.create_connection(('127.0.0.1', 9)))",
             "assert refused(lambda: os.system('true'))", "assert refused(lambda: subprocess.run(['true']))"]
    assert code_tests_verdict(code, tests) == Verdict(1.0, "5/5 tests passed")


def test_the_child_runs_isolated():
    code = "import os, sys\ncwd = os.getcwd()\nenv = dict(os.environ)\nflags = sys.flags.isolated"
    tests = ["assert env == {} or set(env) <= {'LC_CTYPE'}", "assert os.listdir(cwd) == []", "assert flags == 1"]
    assert code_tests_verdict(code, tests).score == 1.0


@pytest.mark.parametrize(("tests", "reason"), [
    ([], "no tests"), ("assert True", "tests must be"), ([1, 2], "tests must be"), (None, "tests must be")])
def test_bad_tests_score_zero(tests, reason):
    verdict = code_tests_verdict("x = 1", tests)
    assert verdict.score == 0.0 and verdict.reason.startswith(reason)


# --- reward functions: built-in names and dataset columns ----------------------------------------


def needs_answer_and_level(responses, answer, level, prompts, scale=None):
    scale = scale or [1.0] * len(responses)
    return [s * (len(p) + len(r) + int(a) + int(v)) for r, a, v, p, s in zip(responses, answer, level, prompts, scale)]


def test_builtins_resolve_by_short_name_and_read_their_columns():
    responses = ["... <answer>66</answer>", "<answer>65</answer>", "66"]
    columns = {"answer": [66, "66", "66"], "tests": [["assert 1"]] * 3, "other": [0, 0, 0]}
    assert load_reward_function("math_answer")(["p"] * 3, responses, columns) == [1.0, 0.0, 0.0]
    assert load_reward_function("answer_format")(["p"] * 3, responses) == [1.0, 1.0, 0.0]
    assert load_reward_function("sentiment_judge")([], ["I loved it"])[0] > 0.5
    code = ["def f(): return 1", "def f(): return 2", "def f(:"]
    tests = [["assert f() == 1", "assert f() > 0"]] * 3
    assert load_reward_function("code_tests")(["p"] * 3, code, {"tests": tests}) == [1.0, 0.5, 0.0]
    assert required_columns("math_answer") == {"answer"}
    assert required_columns("code_tests") == {"tests"}
    assert required_columns("answer_format") == required_columns("sentiment_judge") == set()
    assert required_columns("http://localhost:1/score") == set()


def test_user_functions_get_columns_by_parameter_name():
    spec = "tests.test_verifiers:needs_answer_and_level"
    assert required_columns(spec) == {"answer", "level"}, "prompts is not a column; a default makes one optional"
    function = load_reward_function(spec)
    columns = {"answer": [1, 2], "level": [10, 20], "unused": ["x", "y"]}
    assert function(["ab", "c"], ["xyz", ""], columns) == [2 + 3 + 1 + 10, 1 + 0 + 2 + 20]
    assert function(["ab", "c"], ["xyz", ""], {**columns, "scale": [2.0, 2.0]}) == [32.0, 46.0]
    with pytest.raises(AlignError, match="column 'level' has 1 values for 2 responses"):
        function(["ab", "c"], ["xyz", ""], {**columns, "level": [1]})


def test_a_missing_column_names_the_function_the_column_and_the_columns_there_are():
    message = r"reward function 'math_answer' needs the column\(s\) answer, which .* \(its columns: prompt, solution\)"
    with pytest.raises(AlignError, match=message):
        check_columns("math_answer", ["prompt", "solution"])
    with pytest.raises(AlignError, match=message):
        load_reward_function("math_answer")(["p"], ["<answer>1</answer>"], {"prompt": ["p"], "solution": ["1"]})
    with pytest.raises(AlignError, match=r"needs the column\(s\) answer, level.*its columns: none"):
        load_reward_function("tests.test_verifiers:needs_answer_and_level")(["p"], ["r"])
    check_columns("math_answer", ["answer", "prompt"])


def test_unknown_short_names_list_the_builtins():
    with pytest.raises(AlignError, match="unknown reward function 'math': built-in names are answer_format, "
                                         "code_tests, math_answer, sentiment_judge"):
        load_reward_function("math")


def test_old_style_functions_keep_working():
    by_colon = load_reward_function("tests.reward_helpers:prompt_length_reward")
    assert by_colon(["xy", "z"], ["abcd", "e"]) == [len("xy") - 4, 0]
    assert by_colon(["xy"], ["abcd"], {"answer": [1]}) == [-2]
    assert load_reward_function("reward.functions.sentiment_judge")([], ["I loved it"])[0] > 0.5
