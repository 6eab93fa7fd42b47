"""Criterion's figures as the scripts read them: one reader for bench-compare.py and
eval-backbones.sh, so both name benches, find their folders and refuse stale figures alike."""

import json
from pathlib import Path


def median_ms(criterion, bench, since=None):
    """The median time of `bench` in ms, from criterion's estimates under `criterion`
    (the target folder's criterion/), or None when it has none. Criterion writes a bench named
    `group/name` to `group_name/` or `group/name/` depending on its version. With `since` (a
    time.time() taken before the run), an estimate older than it is an earlier run's, left in
    place because this run skipped the bench: it counts as none."""
    for folder in (bench.replace("/", "_"), bench):
        estimates = Path(criterion) / folder / "new" / "estimates.json"
        if not estimates.exists():
            continue
        if since is not None and estimates.stat().st_mtime < since:
            return None
        return json.loads(estimates.read_text())["median"]["point_estimate"] / 1e6
    return None
