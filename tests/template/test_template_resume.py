"""train.py resumes for real from the checkpoint Baseten loads into $BT_LOAD_CHECKPOINT_DIR.

The CPU proof runs `python train.py` as the job does (a working area holding the
uploaded template, BT_CHECKPOINT_DIR, BT_LOAD_CHECKPOINT_DIR), on the tiny Llama:

- an uninterrupted run of 6 steps (2 epochs of 3), checkpointing every 2 steps and at
  each epoch's end (checkpoint-2, -3, -4, -6);
- the same job killed with SIGKILL as soon as it printed step 3's line, i.e. after
  checkpoint-2 was complete on disk and before it could finish (a real stop, not a
  shorter run: a max-steps cut would change the learning-rate schedule);
- a new job with that checkpoint where Baseten puts it
  (``$BT_LOAD_CHECKPOINT_DIR/rank-0/checkpoint-2/``), which must continue at step 3, in
  the middle of the first epoch (so the data position is restored too), reproduce the
  uninterrupted run's steps 3-6 and end at the same step and total.

The unit tests build checkpoint folders by hand to cover the layouts and the refusals.
"""

from __future__ import annotations

import json
import shutil
import signal
import struct
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import ft.checkpoints
import ft.config_io
import ft.errors
import ft.metrics
import pytest
from template_helpers import (
    EXAMPLE_RUNTIME_CONFIG,
    RunTrain,
    TrainRun,
    prepare_job,
    sentence,
    write_jsonl,
)

BASE = "acme/base-model"
HP = {
    "learning_rate": 0.01,
    "num_epochs": 2,
    "batch_size": 2,
    "gradient_accumulation_steps": 2,
    "max_seq_length": 8,
    "lora_rank": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.1,  # dropout draws random numbers: the RNG state must be restored
    "seed": 5,
}
N_EXAMPLES = 12  # / batch 2 = 6 batches / accumulation 2 = 3 steps per epoch; 2 epochs
TOTAL_STEPS = 6
CHECKPOINT_EVERY = 2
RESUME_FROM = {
    "training_project_id": "proj-1",
    "training_job_id": "job-killed",
    "checkpoint_id": "checkpoint-2",
}
# Same seed, same data, same CPU build, one thread: the resumed steps run the same
# float32 operations in the same order, so the losses agree to the last bit in
# practice (checked on this machine). rel=1e-5 leaves room only for a reordered
# reduction in another torch build; a wrong optimizer, scheduler, RNG or data
# position moves them by 1e-3 or more.
LOSS_TOLERANCE = 1e-5


# ----------------------------------------------------------------------- hand-made checkpoints


def _zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")


def fake_checkpoint(folder: Path, step: int = 2, base: str = BASE, rank: int = 4) -> Path:
    """The files a resumable checkpoint-<step> holds, small and without torch."""
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 6}))
    (folder / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": base, "r": rank, "lora_alpha": 8})
    )
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (folder / "adapter_model.safetensors").write_bytes(
        struct.pack("<Q", len(header)) + header + b"\0" * 8
    )
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        _zip(folder / name)
    return folder


def hp(**changes: Any) -> Any:
    return ft.config_io.Hyperparameters(**{**HP, **changes})


def test_a_checkpoint_under_rank_0_checkpoint_name_is_found(tmp_path: Path) -> None:
    root = ft.checkpoints.load_checkpoint_root({"BT_LOAD_CHECKPOINT_DIR": str(tmp_path)})
    assert root == tmp_path / "rank-0"
    found = fake_checkpoint(root / "checkpoint-2")
    assert ft.checkpoints.find_checkpoint(root) == found
    checked = ft.checkpoints.check_checkpoint(found, BASE, hp())
    assert (checked.global_step, checked.max_steps, checked.base_model) == (2, 6, BASE)


def test_a_checkpoint_directly_under_rank_0_is_found(tmp_path: Path) -> None:
    root = fake_checkpoint(tmp_path / "rank-0")
    assert ft.checkpoints.find_checkpoint(root) == root
    assert ft.checkpoints.find_checkpoint(root, "checkpoint-2") == root


def test_the_node_rank_picks_the_folder(tmp_path: Path) -> None:
    environ = {"BT_LOAD_CHECKPOINT_DIR": str(tmp_path), "BT_NODE_RANK": "1"}
    assert ft.checkpoints.load_checkpoint_root(environ) == tmp_path / "rank-1"
    assert ft.checkpoints.load_checkpoint_root({}) is None


def test_with_several_checkpoints_the_named_one_wins_else_the_newest(tmp_path: Path) -> None:
    root = tmp_path / "rank-0"
    for step in (2, 9, 10):
        fake_checkpoint(root / f"checkpoint-{step}", step=step)
    assert ft.checkpoints.find_checkpoint(root, "checkpoint-9") == root / "checkpoint-9"
    assert ft.checkpoints.find_checkpoint(root) == root / "checkpoint-10"  # by step, not by name
    assert ft.checkpoints.find_checkpoint(root, "checkpoint-77") == root / "checkpoint-10"
    assert ft.checkpoints.find_checkpoint(root, "../rank-0") == root / "checkpoint-10"


def test_nothing_loaded_means_a_fresh_start(tmp_path: Path) -> None:
    assert ft.checkpoints.find_checkpoint(tmp_path / "rank-0") is None  # no folder
    (tmp_path / "rank-0").mkdir()
    assert ft.checkpoints.find_checkpoint(tmp_path / "rank-0") is None  # empty folder
    config = ft.config_io.load_runtime_config(
        {"RUNTIME_CONFIG": json.dumps(EXAMPLE_RUNTIME_CONFIG)}
    )
    assert ft.checkpoints.resolve_resume(config, {"BT_LOAD_CHECKPOINT_DIR": str(tmp_path)}) is None


def test_resume_from_without_a_loaded_checkpoint_is_refused() -> None:
    raw = {**EXAMPLE_RUNTIME_CONFIG, "resume_from": RESUME_FROM}
    config = ft.config_io.load_runtime_config({"RUNTIME_CONFIG": json.dumps(raw)})
    assert config.resume_from == RESUME_FROM
    with pytest.raises(ft.errors.TemplateError) as caught:
        ft.checkpoints.resolve_resume(config, {})
    assert str(caught.value) == (
        "resume_from names checkpoint 'checkpoint-2' of job 'job-killed', but no checkpoint "
        "was loaded (BT_LOAD_CHECKPOINT_DIR=unset); the job needs "
        "runtime.load_checkpoint_config"
    )


def _break(folder: Path, how: str) -> None:
    if how == "truncated adapter":
        data = (folder / "adapter_model.safetensors").read_bytes()
        (folder / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "garbage trainer state":
        (folder / "trainer_state.json").write_text('{"global_step": 2,')
    elif how == "corrupt optimizer":
        data = bytearray((folder / "optimizer.pt").read_bytes())
        data[40:48] = b"\xff" * 8
        (folder / "optimizer.pt").write_bytes(bytes(data))
    elif how == "no optimizer":
        (folder / "optimizer.pt").unlink()
    elif how == "only junk":
        for path in folder.iterdir():
            path.unlink()
        (folder / "notes.txt").write_text("hello")


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("truncated adapter", "adapter_model.safetensors is unreadable (truncated)"),
        ("garbage trainer state", "trainer_state.json is unreadable (JSONDecodeError)"),
        ("corrupt optimizer", "optimizer.pt is unreadable"),
        ("no optimizer", "optimizer.pt is missing"),
    ],
)
def test_an_unreadable_checkpoint_is_refused_by_name(
    tmp_path: Path, how: str, message: str
) -> None:
    folder = fake_checkpoint(tmp_path / "rank-0" / "checkpoint-2")
    _break(folder, how)
    with pytest.raises(ft.errors.TemplateError) as caught:
        ft.checkpoints.check_checkpoint(folder, BASE, hp())
    assert str(caught.value).startswith(f"checkpoint 'checkpoint-2' cannot be resumed: {message}")


def test_a_folder_without_any_checkpoint_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "rank-0" / "stuff").mkdir(parents=True)
    (tmp_path / "rank-0" / "stuff" / "notes.txt").write_text("hello")
    with pytest.raises(
        ft.errors.TemplateError, match=r"unreadable: it holds no trainer_state\.json"
    ):
        ft.checkpoints.find_checkpoint(tmp_path / "rank-0")


def test_another_base_model_or_other_lora_settings_are_refused(tmp_path: Path) -> None:
    folder = fake_checkpoint(tmp_path / "checkpoint-2")
    with pytest.raises(ft.errors.TemplateError) as caught:
        ft.checkpoints.check_checkpoint(folder, "acme/other-model", hp())
    assert str(caught.value) == (
        "checkpoint 'checkpoint-2' cannot be resumed: it was trained from base model "
        "'acme/base-model', and this job's model is 'acme/other-model'; a checkpoint "
        "resumes only on its own base model"
    )
    with pytest.raises(
        ft.errors.TemplateError, match="trained with lora_rank 4, this job asks for 16"
    ):
        ft.checkpoints.check_checkpoint(folder, BASE, hp(lora_rank=16))
    # The marker train.py writes names the base model too, and wins over the adapter's.
    (folder / "ft_checkpoint.json").write_text(json.dumps({"model_id": "acme/third"}))
    with pytest.raises(ft.errors.TemplateError, match="from base model 'acme/third'"):
        ft.checkpoints.check_checkpoint(folder, BASE, hp())


def test_an_adapter_only_folder_such_as_final_is_refused_with_the_way_out(tmp_path: Path) -> None:
    folder = fake_checkpoint(tmp_path / "final")
    for name in ("trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (folder / name).unlink()
    with pytest.raises(ft.errors.TemplateError) as caught:
        ft.checkpoints.check_checkpoint(folder, BASE, hp())
    assert str(caught.value) == (
        "checkpoint 'final' cannot be resumed: it holds an adapter but no trainer_state.json "
        "(optimizer, scheduler and step); resume from a checkpoint-<step> folder, not final/"
    )


@pytest.mark.parametrize(
    ("max_steps", "epochs", "expected"),
    [
        (6, 2, {2, 3, 4, 6}),
        (8, 2, {2, 4, 6, 8}),
        (1000, 1, {250, 500, 750, 1000}),
        (10, 1, {3, 6, 9, 10}),
        (3, 3, {1, 2, 3}),
        (0, 1, set()),
    ],
)
def test_checkpoints_at_each_epoch_end_and_at_least_four_per_run(
    max_steps: int, epochs: int, expected: set[int]
) -> None:
    assert ft.checkpoints.checkpoint_steps(max_steps, epochs) == expected


# ----------------------------------------------------------------------- one final loss


def test_the_summary_repeats_the_last_step_lines_loss() -> None:
    """final_loss is the last step line's loss, not a value computed apart (e.g. the
    mean over the run, which transformers logs as train_loss)."""
    history = [
        {"loss": 0.61, "step": 49},
        {"loss": 0.5268, "step": 50},
        {"train_loss": 0.4885, "step": 50},
    ]
    state = SimpleNamespace(global_step=50, max_steps=50, epoch=1.0, log_history=history)
    trainer = SimpleNamespace(state=state)
    last_step = {"type": "step", "step": 50, "total_steps": 50, "loss": 0.5268}
    record = ft.metrics.summary_record(trainer, last_step, 12.5)
    assert record == {
        "type": "summary",
        "step": 50,
        "total_steps": 50,
        "epoch": 1.0,
        "final_loss": 0.5268,
        "best_eval_loss": None,
        "runtime_seconds": 12.5,
    }
    # A resumed run that had no step left to print repeats the restored history's last loss.
    assert ft.metrics.summary_record(trainer, None, 1.0)["final_loss"] == 0.5268


# ----------------------------------------------------------------------- CPU proof


def runtime_config(dataset: Path, model: Path, **extra: Any) -> dict[str, Any]:
    return {
        **EXAMPLE_RUNTIME_CONFIG,
        "dataset_id": str(dataset),
        "model_id": str(model),
        "hyperparameters": HP,
        **extra,
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [{"text": sentence(i)} for i in range(N_EXAMPLES)]
    return write_jsonl(tmp_path_factory.mktemp("resume-data") / "train.jsonl", rows)


@pytest.fixture(scope="module")
def uninterrupted(
    run_train: RunTrain, tiny_model: Path, dataset: Path, training_stack: None
) -> TrainRun:
    run = run_train(
        DATASET_ID=str(dataset),
        MODEL_ID=str(tiny_model),
        RUNTIME_CONFIG=runtime_config(dataset, tiny_model),
    )
    assert run.returncode == 0, run.describe()
    return run


class KilledRun(SimpleNamespace):
    returncode: int
    stdout: str
    stderr: str
    checkpoint_dir: Path


@pytest.fixture(scope="module")
def killed(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, dataset: Path, training_stack: None
) -> KilledRun:
    """The same job, killed (SIGKILL) the moment it prints step CHECKPOINT_EVERY + 1.

    The trainer saves checkpoint-2 at the end of step 2, before step 3 starts, and
    train.py's ft_checkpoint.json marker is written last: so once step 3's line is
    out, checkpoint-2 is complete, and the job is stopped in the middle of its run.
    """
    from finetune_api.insights.training_metrics import parse_line

    workdir = tmp_path_factory.mktemp("killed-job")
    app, environ, checkpoints = prepare_job(
        workdir,
        {
            "DATASET_ID": str(dataset),
            "MODEL_ID": str(tiny_model),
            "RUNTIME_CONFIG": runtime_config(dataset, tiny_model),
        },
    )
    with (workdir / "stderr.txt").open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "train.py"],
            cwd=app,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        watchdog = threading.Timer(240, proc.kill)
        watchdog.start()
        lines = []
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                lines.append(line)
                record = parse_line(line)
                if record and record["type"] == "step" and record["step"] > CHECKPOINT_EVERY:
                    proc.send_signal(signal.SIGKILL)
                    break
            proc.wait(timeout=60)
        finally:
            watchdog.cancel()
            proc.kill()
            proc.stdout.close()
    return KilledRun(
        returncode=proc.returncode,
        stdout="".join(lines),
        stderr=(workdir / "stderr.txt").read_text(),
        checkpoint_dir=checkpoints,
    )


@pytest.fixture(scope="module")
def resumed(
    run_train: RunTrain,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Path,
    dataset: Path,
    killed: KilledRun,
    uninterrupted: TrainRun,
) -> TrainRun:
    """A new job whose runtime loaded the killed job's checkpoint-2, as Baseten does:
    into $BT_LOAD_CHECKPOINT_DIR/rank-0/checkpoint-2/. A newer checkpoint of another job
    lies beside it; resume_from names checkpoint-2, so that one is used."""
    load_dir = tmp_path_factory.mktemp("bt-load-checkpoint")
    shutil.copytree(killed.checkpoint_dir / "checkpoint-2", load_dir / "rank-0" / "checkpoint-2")
    shutil.copytree(
        uninterrupted.checkpoint_dir / "checkpoint-4", load_dir / "rank-0" / "checkpoint-4"
    )
    run = run_train(
        DATASET_ID=str(dataset),
        MODEL_ID=str(tiny_model),
        RUNTIME_CONFIG=runtime_config(dataset, tiny_model, resume_from=RESUME_FROM),
        BT_LOAD_CHECKPOINT_DIR=str(load_dir),
    )
    assert run.returncode == 0, run.describe()
    return run


def test_the_uninterrupted_run_checkpoints_every_two_steps_with_all_resume_needs(
    uninterrupted: TrainRun,
) -> None:
    assert [r["step"] for r in uninterrupted.progress] == list(range(1, TOTAL_STEPS + 1))
    names = {p.name for p in uninterrupted.checkpoint_dir.glob("checkpoint-*")}
    # Every ceil(6 / MIN_CHECKPOINTS) = 2 steps, and at each epoch's end (step 3, 6).
    assert ft.checkpoints.checkpoint_steps(TOTAL_STEPS, 2) == {2, 3, 4, 6}
    assert names == {"checkpoint-2", "checkpoint-3", "checkpoint-4", "checkpoint-6"}
    folder = uninterrupted.checkpoint_dir / "checkpoint-2"
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
        "ft_checkpoint.json",
    ):
        assert (folder / name).is_file(), name
    marker = json.loads((folder / "ft_checkpoint.json").read_text())
    assert marker["global_step"] == 2 and marker["max_steps"] == TOTAL_STEPS
    assert (
        marker["model_id"]
        == json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    )


def test_the_killed_run_stopped_after_its_first_checkpoint(killed: KilledRun) -> None:
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert (killed.checkpoint_dir / "checkpoint-2" / "ft_checkpoint.json").is_file()
    assert not (killed.checkpoint_dir / "checkpoint-6").exists()
    assert not (killed.checkpoint_dir / "final").exists()


def test_the_resumed_run_continues_at_the_next_step_and_matches_the_uninterrupted_run(
    resumed: TrainRun, uninterrupted: TrainRun
) -> None:
    steps = resumed.progress
    assert [r["step"] for r in steps] == list(range(CHECKPOINT_EVERY + 1, TOTAL_STEPS + 1))
    assert {r["total_steps"] for r in steps} == {TOTAL_STEPS}
    same_steps = {r["step"]: r for r in uninterrupted.progress}
    for record in steps:
        reference = same_steps[record["step"]]
        assert record["loss"] == pytest.approx(reference["loss"], rel=LOSS_TOLERANCE)
        assert record["learning_rate"] == pytest.approx(reference["learning_rate"], rel=1e-9)
        assert record["epoch"] == reference["epoch"]
        assert record["tokens_seen"] == reference["tokens_seen"]  # data position restored
    summary_line = resumed.summary_line
    assert summary_line["step"] == summary_line["total_steps"] == TOTAL_STEPS
    assert summary_line["final_loss"] == steps[-1]["loss"]
    summary = resumed.summary
    assert (summary["global_step"], summary["total_steps"]) == (TOTAL_STEPS, TOTAL_STEPS)
    # The whole history: steps 1-2 restored from the checkpoint, 3-6 trained here.
    assert summary["losses"] == pytest.approx(uninterrupted.summary["losses"], rel=LOSS_TOLERANCE)
    assert summary["resumed_from"] == {
        **RESUME_FROM,
        "checkpoint": "checkpoint-2",
        "global_step": 2,
    }
    assert 'resume_from {"checkpoint_id": "checkpoint-2"' in resumed.stdout
    assert "continuing at step 3 of 6" in resumed.stdout
    assert resumed.progress[0]["epoch"] == pytest.approx(1.0)  # mid-run: epoch 1 ends at 3
    names = sorted(p.name for p in resumed.checkpoint_dir.glob("checkpoint-*"))
    assert names == ["checkpoint-3", "checkpoint-4", "checkpoint-6"]


def test_summary_line_and_summary_file_agree_with_the_last_step_line(
    uninterrupted: TrainRun,
) -> None:
    last = uninterrupted.progress[-1]
    line = uninterrupted.summary_line
    assert (line["step"], line["final_loss"]) == (last["step"], last["loss"])
    summary = uninterrupted.summary
    assert summary["final_loss"] == last["loss"] == summary["losses"][-1]
    assert summary["global_step"] == last["step"]


def _run_with_loaded(
    run_train: RunTrain, tmp_path: Path, dataset: Path, model: str, folder: Path
) -> TrainRun:
    return run_train(
        DATASET_ID=str(dataset),
        MODEL_ID=model,
        RUNTIME_CONFIG=runtime_config(dataset, Path(model)),
        BT_LOAD_CHECKPOINT_DIR=str(tmp_path),
        timeout=120,
    )


def test_a_checkpoint_of_another_base_model_stops_the_job_at_once(
    run_train: RunTrain, tmp_path: Path, dataset: Path, uninterrupted: TrainRun, tiny_model: Path
) -> None:
    # Loaded directly under rank-0/ this time.
    shutil.copytree(uninterrupted.checkpoint_dir / "checkpoint-2", tmp_path / "rank-0")
    run = _run_with_loaded(run_train, tmp_path, dataset, "acme/other-model", tmp_path)
    assert run.returncode == 2, run.describe()
    assert run.error_line == (
        "train.py: error: checkpoint 'rank-0' cannot be resumed: it was trained from base "
        f"model {str(tiny_model)!r}, and this job's model is 'acme/other-model'; a checkpoint "
        "resumes only on its own base model"
    )
    assert "Traceback" not in run.stderr
    assert not run.checkpoint_dir.exists()


def test_an_unreadable_checkpoint_stops_the_job_at_once(
    run_train: RunTrain, tmp_path: Path, dataset: Path, uninterrupted: TrainRun, tiny_model: Path
) -> None:
    folder = tmp_path / "rank-0" / "checkpoint-2"
    shutil.copytree(uninterrupted.checkpoint_dir / "checkpoint-2", folder)
    _break(folder, "truncated adapter")
    run = _run_with_loaded(run_train, tmp_path, dataset, str(tiny_model), tmp_path)
    assert run.returncode == 2, run.describe()
    assert run.error_line == (
        "train.py: error: checkpoint 'checkpoint-2' cannot be resumed: "
        "adapter_model.safetensors is unreadable (truncated)"
    )
    assert "Traceback" not in run.stderr
    assert not run.checkpoint_dir.exists()
