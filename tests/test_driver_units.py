"""Pure parts of the Docker driver: pull progress folding and stats arithmetic."""

from __future__ import annotations

import pytest

from bot.docker_driver import PullAggregator, _parse_time, usage_from_stats
from bot.errors import ImageUnavailable


def test_pull_progress_folds_layers() -> None:
    agg = PullAggregator("itzg/minecraft-server")
    agg.feed({"status": "Pulling from itzg/minecraft-server", "id": "latest"})
    agg.feed({"status": "Pulling fs layer", "id": "a"})
    agg.feed({"status": "Pulling fs layer", "id": "b"})
    agg.feed({"status": "Already exists", "id": "c"})
    p = agg.feed(
        {"status": "Downloading", "id": "a", "progressDetail": {"current": 50, "total": 100}}
    )
    assert (p.current, p.total, p.layers_done, p.layers) == (50, 100, 1, 3)
    p = agg.feed(
        {"status": "Downloading", "id": "b", "progressDetail": {"current": 100, "total": 300}}
    )
    assert p.fraction == pytest.approx(150 / 400)
    agg.feed({"status": "Pull complete", "id": "a"})
    p = agg.feed({"status": "Pull complete", "id": "b"})
    assert (p.current, p.total, p.layers_done) == (400, 400, 3)
    p = agg.feed({"status": "Status: Downloaded newer image for itzg/minecraft-server:latest"})
    assert p.status.startswith("Status: Downloaded")


def test_pull_error_event_names_image() -> None:
    agg = PullAggregator("ghost/img:1")
    with pytest.raises(ImageUnavailable, match="Image 'ghost/img:1' could not be pulled: boom"):
        agg.feed({"error": "boom", "errorDetail": {"message": "boom"}})


def test_usage_from_stats_cgroup_v2() -> None:
    stats = {
        "cpu_stats": {
            "cpu_usage": {"total_usage": 2_000_000},
            "system_cpu_usage": 20_000_000,
            "online_cpus": 2,
        },
        "precpu_stats": {"cpu_usage": {"total_usage": 1_000_000}, "system_cpu_usage": 10_000_000},
        "memory_stats": {
            "usage": 100 * 2**20,
            "limit": 512 * 2**20,
            "stats": {"inactive_file": 20 * 2**20},
        },
    }
    u = usage_from_stats(stats)
    assert u.cpu_percent == 20.0 and u.memory_bytes == 80 * 2**20 and u.memory_limit == 512 * 2**20
    assert usage_from_stats({}).cpu_percent == 0.0


def test_parse_docker_time() -> None:
    t = _parse_time("2026-11-21T22:05:07.123456789Z")
    assert t is not None and t.microsecond == 123456 and t.utcoffset() is not None
    assert _parse_time("0001-01-01T00:00:00Z") is None
