"""A short soak (the long one is `python -m benchmarks.soak`): no leak of memory or file descriptors."""

from __future__ import annotations

from benchmarks.soak import SoakConfig, soak


def test_short_soak_keeps_memory_and_descriptors_flat() -> None:
    result = soak(SoakConfig(seconds=10, fps=20, sample_s=0.5, warmup_fraction=0.3))
    frames = result["frames"]
    assert frames["failed"] == 0 and frames["published"] >= 60
    assert frames["received_by_subscriber"] >= frames["published"] - 2  # at most the frames in flight at stop
    assert abs(result["fd_growth_pct"]) < 5, result["fds"]
    assert abs(result["rss_growth_pct"]) < 5, result["rss_mb"]
