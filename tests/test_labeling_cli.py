"""`align label ...` sub-commands, run in-process."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from labeling_ui import store as st
from labeling_ui.__main__ import main

EXAMPLE = Path(__file__).resolve().parents[1] / "configs" / "labeling_example.jsonl"


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(word in out for word in ("serve", "users", "import", "export"))


def test_users_import_export_round_trip(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ALIGN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("sys.stdin", io.StringIO("password123\n"))
    assert main(["users", "add", "ann", "--password-stdin"]) == 0
    assert (tmp_path / "home" / "labeling.db").is_file()  # default database under ALIGN_HOME
    guidelines = tmp_path / "guide.md"
    guidelines.write_text("Be fair.")
    assert main(["import", "demo", str(EXAMPLE), "-m", "1", "--guidelines", str(guidelines)]) == 0
    assert "added 5 items" in capsys.readouterr().out
    store = st.Store()
    user = st.get_user(store, "ann")
    task = st.claim_next(store, user, "demo")
    assert task.guidelines == "Be fair."
    st.submit_ranking(
        store, user, task.assignment_id, {c["id"]: i + 1 for i, c in enumerate(task.candidates)}
    )
    k = len(task.candidates)
    out = tmp_path / "pairs.jsonl"
    assert main(["export", "demo", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == k * (k - 1) // 2 and all(row["prompt"] == task.prompt for row in rows)


def test_user_errors_exit_2_with_a_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ALIGN_HOME", str(tmp_path))
    assert main(["import", "demo", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "candidates": ["only one"]}\n')
    assert main(["import", "demo", str(bad)]) == 2
    assert "need 2 to 8 candidates" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["users", "add", "ann", "--password-stdin"]) == 2
    assert "at least 8 characters" in capsys.readouterr().err
    assert main(["export", "nope", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "no project named 'nope'" in capsys.readouterr().err


def test_align_cli_shows_the_label_job(monkeypatch, capsys):
    from alignment import cli

    monkeypatch.setattr(cli, "JOB_MODULES", ("labeling_ui.cli",))  # the other jobs live on other branches
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "Labeling app: serve, users, import, generate, export" in capsys.readouterr().out
    assert cli.main(["label", "import", "demo", "/nonexistent.jsonl", "--db", "sqlite://"]) == 2


def test_registering_the_cli_imports_nothing_heavy():
    import subprocess
    import sys

    code = (
        "import sys, argparse, labeling_ui.cli as c; c.register(argparse.ArgumentParser().add_subparsers()); "
        "print([m for m in ('gradio', 'sqlalchemy', 'fastapi', 'torch') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
