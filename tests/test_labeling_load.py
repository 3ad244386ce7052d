"""A smaller run of the load benchmark's code path, with and without a SIGKILL of the server."""

from __future__ import annotations

import pytest

from labeling_ui.load import run_load

pytestmark = pytest.mark.slow


def test_concurrent_annotators_nothing_lost_or_duplicated_m_respected(tmp_path):
    result, checks = run_load(tmp_path, annotators=10, per_annotator=5, m=2, timeout=120)
    assert result.errors == []
    assert checks == {"acknowledged": 50, "stored": 50, "lost": 0, "duplicated": 0, "over_m": 0, "errors": 0}


def test_sigkill_during_load_keeps_every_acknowledged_submission(tmp_path):
    result, checks = run_load(tmp_path, annotators=8, per_annotator=5, m=2, kill_after=12, timeout=180)
    assert result.errors == []
    assert checks["lost"] == checks["duplicated"] == checks["over_m"] == 0
    assert checks["acknowledged"] >= 12  # the crash happened midway, after these were acknowledged
    assert checks["stored"] == 40  # submits cut off by the crash were retried: every planned ranking is there
    assert "server.log" in {path.name for path in tmp_path.iterdir()}


def test_concurrent_annotators_on_postgresql_nothing_lost_or_duplicated(tmp_path, postgres):
    from labeling_ui.load import create_database

    result, checks = run_load(
        tmp_path, annotators=10, per_annotator=5, m=2, timeout=120, db_url=create_database(postgres)
    )
    assert result.errors == []
    assert checks == {"acknowledged": 50, "stored": 50, "lost": 0, "duplicated": 0, "over_m": 0, "errors": 0}
