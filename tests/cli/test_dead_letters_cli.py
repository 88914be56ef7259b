"""`robmon dead-letters list`: the newest dead letters with their reasons, and counts by kind of
reason, from the dead letters a real ingest run stored."""

import base64
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image

from tests.ingest.lines import record, write_lines


def _bmp() -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buffer, format="BMP")
    return base64.b64encode(buffer.getvalue()).decode()


def test_dead_letters_list_shows_rows_and_counts_by_reason(home, robmon, tmp_path: Path) -> None:
    lines = [
        '{"broken',
        record(inp={"array": [[0.5]]}, ts="0001-01-01T00:00:00+05:00", source="10.6.6.6"),
        '{"also broken',
        record(inp={"array": [[0.5]]}, ts="9999-12-31T23:59:59-05:00", source="10.6.6.6"),
        record(inp={"png_b64": _bmp()}, source="10.6.6.6"),
        record(inp={"array": [[0.5]]}, ts="1900-01-01T00:00:00Z", source="10.7.7.7"),
    ]
    log = write_lines(tmp_path / "hostile.jsonl", lines)
    ingested = robmon("ingest", str(log), "--json")
    assert ingested.code == 0, ingested.stderr
    assert ingested.json()["dead_letters"] == 6

    listed = robmon("dead-letters", "list", "--json")
    assert listed.code == 0, listed.stderr
    data = listed.json()
    rows = data["dead_letters"]
    assert [r["line_number"] for r in rows] == [6, 5, 4, 3, 2, 1]  # newest first
    assert rows[1]["reason"] == (
        "input.png_b64 holds BMP, not an accepted image format (PNG, JPEG)."
    )
    assert rows[1]["source"] == "10.6.6.6" and rows[1]["origin"] == str(log.resolve())
    assert rows[5]["excerpt"] == '{"broken' and rows[5]["source"] is None
    by_reason = {c["reason"]: c["count"] for c in data["by_reason"]}
    # three reasons, three different times: one kind
    out_of_range = "ts '…' is out of range: record times lie between N and N."
    assert by_reason[out_of_range] == 3
    assert sum(by_reason.values()) == 6 and len(by_reason) == 3
    assert data["by_reason"][0]["reason"] == out_of_range  # most frequent first

    only = robmon("dead-letters", "list", "--source", "10.6.6.6", "--limit", "2", "--json").json()
    assert [r["line_number"] for r in only["dead_letters"]] == [5, 4]
    assert sum(c["count"] for c in only["by_reason"]) == 3
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert robmon("dead-letters", "list", "--since", future, "--json").json() == {
        "dead_letters": [],
        "by_reason": [],
    }

    table = robmon("dead-letters", "list")
    assert table.code == 0, table.stderr
    assert "by reason" in table.stdout and "holds BMP, not an accepted image format" in table.stdout
    assert robmon("dead-letters", "list", "--since", future).stdout.strip() == "no dead letters"
