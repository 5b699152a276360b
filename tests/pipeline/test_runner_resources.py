"""The per-stage cost table every `wsss run` prints."""

from __future__ import annotations

from wsss.pipeline.runner import StageOutcome, format_resources


def test_resource_table_keeps_long_stage_names_apart() -> None:
    table = format_resources([StageOutcome("data", "skipped", 0.2, 700.0),
                              StageOutcome("train_affinitynet", "ran", 44.25, 1153.4)])
    header, first, second = table.splitlines()
    assert header.split() == ["stage", "status", "seconds", "peak", "RSS", "MB"]
    assert first.split() == ["data", "skipped", "0.2", "700"]
    assert second.split() == ["train_affinitynet", "ran", "44.2", "1153"]
