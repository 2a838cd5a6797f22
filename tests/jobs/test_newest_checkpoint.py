"""Which checkpoint a resume or a retry continues from by default."""

from __future__ import annotations

from finetune_api.jobs.resume import newest_checkpoint


def item(name: str, at: str) -> dict[str, str]:
    return {"checkpoint_id": name, "created_at": at}


def test_the_newest_trainer_checkpoint_wins_over_the_adapter_only_final() -> None:
    listed = [
        item("checkpoint-2", "2026-12-03T10:00:00Z"),
        item("checkpoint-4", "2026-12-03T10:05:00Z"),
        item("final", "2026-12-03T10:06:00Z"),
    ]
    assert newest_checkpoint(listed) == "checkpoint-4"


def test_without_trainer_checkpoints_the_newest_of_any_name() -> None:
    listed = [item("a", "2026-12-03T10:00:00Z"), item("b", "2026-12-03T10:01:00Z")]
    assert newest_checkpoint(listed) == "b"
    assert newest_checkpoint([]) is None
