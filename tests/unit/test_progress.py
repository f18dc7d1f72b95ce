"""What `make run` prints while the producer snapshots a collection."""

from __future__ import annotations

import io
import time

from vecsync.producer_state import Snapshot
from vecsync_local.console import Progress


def test_make_run_shows_how_far_the_snapshot_has_read() -> None:
    output = io.StringIO()
    snapshot = Snapshot(token="{}", last_id=None, published=500, estimated=2000, started_at=time.time() - 10)
    Progress(2000, output).show(120, snapshot)
    line = output.getvalue()
    assert line.startswith("Searchable: 120/2000 (snapshot: 500 of about 2000 read, about 30 s left)"), line
    assert "\r" not in line
