"""The nightly run purge deletes finished runs older than the cutoff, never running ones."""

import sys
import time
from pathlib import Path

import dagster as dg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from purge_runs import purge_runs


@dg.asset
def tiny() -> None:
    return None


def test_purge_keeps_recent_and_unfinished_runs() -> None:
    with dg.instance_for_test() as instance:
        done = [dg.materialize([tiny], instance=instance).run_id for _ in range(3)]
        running = instance.create_run_for_job(
            dg.Definitions(assets=[tiny]).resolve_implicit_global_asset_job_def(),
            status=dg.DagsterRunStatus.STARTED,
        )
        assert purge_runs(instance, older_than_days=1) == 0  # all younger than a day
        later = time.time() + 2 * 86400
        assert purge_runs(instance, 1, dry_run=True, now=later) == 3
        assert len(instance.get_runs()) == 4
        assert purge_runs(instance, 1, now=later, batch=2) == 3
        remaining = [r.run_id for r in instance.get_runs()]
        assert remaining == [running.run_id]
        assert not any(instance.all_logs(run_id) for run_id in done)
        with pytest.raises(ValueError, match=">= 0"):
            purge_runs(instance, -1)
