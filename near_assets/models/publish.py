"""Publishing helper shared by the model assets (not an asset module)."""

from collections.abc import Iterator

import dagster as dg


def no_retry_when_blocked(
    events: Iterator[dg.AssetCheckResult | dg.MaterializeResult],
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Pass ``publish_days`` events through; a failure after a failed blocking audit is final.

    ``publishing.wap`` raises the audit failure without ``allow_retries``, which Dagster
    reads as True, so the asset's retry policy would re-run a deterministic block twice (with
    its delays). Lock contention and unknown states (no failed audit) stay retryable.
    """
    blocked = False
    try:
        for ev in events:
            if (
                isinstance(ev, dg.AssetCheckResult)
                and not ev.passed
                and ev.severity == dg.AssetCheckSeverity.ERROR
            ):
                blocked = True
            yield ev
    except dg.Failure as exc:
        if not blocked:
            raise
        raise dg.Failure(
            description=exc.description, metadata=exc.metadata, allow_retries=False
        ) from exc
