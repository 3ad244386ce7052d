"""Console routing: our lines and real warnings on the console, library INFO in the log file."""

from __future__ import annotations

import logging
import subprocess
import sys

from tests.conftest import REPO, subprocess_env


def record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_console_filter_keeps_our_lines_and_real_warnings_only():
    from alignment.logs import ConsoleFilter

    passes = ConsoleFilter().filter
    assert passes(record("alignment.trainer", logging.INFO, "step 3"))
    assert passes(record("align.generate", logging.INFO, "wrote x"))
    assert not passes(record("vllm.engine", logging.INFO, "Reloading weights"))
    assert not passes(record("DeepSpeed", logging.INFO, "ZeRO stage 2"))
    assert passes(record("vllm.engine", logging.WARNING, "KV cache is nearly full"))
    assert passes(record("torch", logging.ERROR, "boom"))
    assert not passes(record("vllm.layerwise", logging.WARNING, "RotaryEmbedding: Failed to load weights"))


SCRIPT = """
import logging, os, sys
from alignment.logs import open_job_log, redirect_actor_output
path = open_job_log(sys.argv[1])
logging.getLogger("vllm.x").info("driver library info")
logging.getLogger("vllm.x").warning("driver library warning")
logging.getLogger("alignment.x").info("driver own info")
pid = os.fork()
if pid == 0:  # stands in for a Ray actor: its stderr is what Ray forwards to the driver's console
    redirect_actor_output(str(path))
    import logging as lg
    lg.getLogger("DeepSpeed").addHandler(lg.StreamHandler(sys.stdout))  # a library's own handler
    from alignment.logs import adopt_library_loggers
    adopt_library_loggers()
    lg.getLogger("DeepSpeed").info("actor library info")
    lg.getLogger("DeepSpeed").warning("actor library warning")
    print("actor plain print")
    os.write(2, b"actor C-level write\\n")
    os._exit(0)
os.waitpid(pid, 0)
"""


def test_library_info_goes_to_the_log_file_and_warnings_to_the_console(tmp_path):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, env=subprocess_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    console = result.stdout + result.stderr
    log = (tmp_path / "logs" / "libraries.log").read_text()
    for line in ("driver library warning", "driver own info", "actor library warning"):
        assert line in console, line
    for line in ("driver library info", "actor library info", "actor plain print", "actor C-level write"):
        assert line not in console, line
        assert line in log, line
    assert f"library logs (vLLM, Ray, DeepSpeed): {tmp_path / 'logs' / 'libraries.log'}" in console
