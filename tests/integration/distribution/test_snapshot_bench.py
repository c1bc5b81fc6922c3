"""bench/snapshot.py still runs: a few edits and one small size, end to end (the figures
themselves come from a full run: `.venv/bin/python bench/snapshot.py`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "bench" / "snapshot.py"


def test_the_snapshot_bench_runs_and_reports_every_figure() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--edits", "5", "--sizes", "60", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    edits = report["edits"]
    assert edits["edits"] == 5
    assert 0 < edits["ack_ms"]["p50"] <= edits["ack_ms"]["max"] < 5_000
    assert 0 < edits["served_ms"]["p50"] <= edits["served_ms"]["max"] < 5_000
    [size] = report["sizes"]
    assert size["routes"] == 60 and size["backends"] == 2 * 3 + 1
    assert size["fits_secret"] and size["gzip_bytes"] < size["bytes"]
    assert size["publish_to_warm_ack_s"] < 10 and size["cold_gateway_spawn_to_ready_s"] < 30
    assert size["rss_with_snapshot"]["gateway_mib"] > 10
    assert size["rss_with_snapshot"]["server_mib"] > 10
