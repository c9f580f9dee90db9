"""Finding a completed savepoint on disk when a mini-cluster shut its REST endpoint down."""

from __future__ import annotations

import os
import time

from recsys.local.cluster import _completed_savepoint_on_disk

JOB = "daf823b08644f2b08c15cc95fea69de4"


def test_newest_complete_savepoint_of_the_job_is_found(tmp_path):
    older = tmp_path / "savepoint-daf823-aaaaaaaaaaaa"
    newer = tmp_path / "savepoint-daf823-bbbbbbbbbbbb"
    partial = tmp_path / "savepoint-daf823-cccccccccccc"  # no _metadata yet: incomplete
    other = tmp_path / "savepoint-0123ab-dddddddddddd"    # another job's
    for d in (older, newer, partial, other):
        d.mkdir()
    for d, age in ((older, 60), (newer, 0), (other, -60)):
        (d / "_metadata").write_bytes(b"x")
        t = time.time() - age
        os.utime(d / "_metadata", (t, t))
    assert _completed_savepoint_on_disk(str(tmp_path), JOB, wait_s=0) == f"file:{newer}"
    assert _completed_savepoint_on_disk(tmp_path.as_uri(), JOB, wait_s=0) == f"file:{newer}"


def test_nothing_complete_or_not_local_gives_none(tmp_path):
    (tmp_path / "savepoint-daf823-cccccccccccc").mkdir()
    assert _completed_savepoint_on_disk(str(tmp_path), JOB, wait_s=0) is None
    assert _completed_savepoint_on_disk("s3://bucket/savepoints", JOB, wait_s=0) is None
