"""The template's "Did it get better?" lines, read: base and tuned evaluations, samples, the
results CSV, and what a malformed line costs (it is skipped and named, never an error)."""

from __future__ import annotations

import io
import json

import pandas

from finetune_api.insights.training_metrics import (
    MARKER,
    SAMPLE_TEXT_CHARS,
    evaluation_answer,
    final_summary,
    format_line,
    parse_series,
    results_csv,
)

S = 1_000_000_000


def step(n: int, loss: float, accuracy: float | None) -> str:
    record = {"type": "step", "step": n, "total_steps": 4, "epoch": n / 2, "loss": loss}
    return format_line({**record, "mean_token_accuracy": accuracy})


def evaluation(n: int, loss: float, accuracy: float, model: str | None) -> str:
    record = {
        "type": "eval",
        "step": n,
        "epoch": n / 2,
        "eval_loss": loss,
        "eval_mean_token_accuracy": accuracy,
    }
    return format_line({**record, "model": model} if model else record)


def sample(index: int, **texts: str) -> str:
    record = {"type": "sample", "index": index, "prompt": "p", "reference": "r"}
    return format_line({**record, "base": "b", "tuned": "t", **texts})


def run(*messages: str) -> list[tuple[int, str]]:
    return [(i * S, message) for i, message in enumerate(messages)]


RUN = run(
    evaluation(0, 2.5, 0.40, "base"),
    step(1, 2.0, 0.45),
    step(2, 1.5, 0.55),
    evaluation(2, 1.6, 0.60, "tuned"),
    step(3, 1.2, 0.62),
    step(4, 1.0, None),
    evaluation(4, 1.1, 0.70, "tuned"),
    sample(1, tuned="second"),
    sample(0, tuned="first"),
    format_line(
        {"type": "summary", "step": 4, "total_steps": 4, "final_loss": 1.0, "eval_loss": 1.1}
    ),
)


def test_base_tuned_change_and_samples_from_the_lines() -> None:
    answer = evaluation_answer(parse_series(RUN))
    assert answer["base"] == {"step": 0, "eval_loss": 2.5, "eval_mean_token_accuracy": 0.40}
    assert answer["tuned"] == {
        "step": 4,
        "epoch": 2.0,
        "eval_loss": 1.1,
        "eval_mean_token_accuracy": 0.70,
    }
    assert answer["change"] == {"eval_loss": -1.4, "eval_mean_token_accuracy": 0.3}
    assert [s["index"] for s in answer["samples"]] == [0, 1]
    assert [s["tuned"] for s in answer["samples"]] == ["first", "second"]
    assert answer["evaluations"] == 2
    assert answer["skipped"] == {"lines": 0, "eval_lines": 0, "sample_lines": 0}


def test_the_base_evaluation_stays_out_of_the_tuned_series() -> None:
    series = parse_series(RUN)
    # best_eval_loss and the metrics route's evaluations are the tuned model's only.
    assert list(series.eval_steps) == [2, 4] and series.best_eval_loss() == 1.1
    assert series.step_record(1)["mean_token_accuracy"] == 0.55
    summary = final_summary(series, created_at=None, finished_at=None)
    assert summary is not None
    assert summary["base_eval_loss"] == 2.5 and summary["eval_loss"] == 1.1


def test_an_eval_line_without_model_is_the_tuned_one_as_old_jobs_print() -> None:
    answer = evaluation_answer(parse_series(run(evaluation(5, 0.9, 0.8, None))))
    assert answer["base"] is None and answer["change"] is None
    assert answer["tuned"] is not None and answer["tuned"]["eval_loss"] == 0.9


def test_nothing_there_yet_is_all_null() -> None:
    answer = evaluation_answer(parse_series(run(step(1, 2.0, 0.4), "plain output")))
    assert (answer["base"], answer["tuned"], answer["change"], answer["samples"]) == (None,) * 4


def test_the_summary_line_stands_in_for_eval_lines_not_read() -> None:
    summary = format_line(
        {
            "type": "summary",
            "step": 9,
            "base_eval_loss": 2.0,
            "base_eval_mean_token_accuracy": 0.5,
            "eval_loss": 1.5,
            "eval_mean_token_accuracy": 0.6,
        }
    )
    answer = evaluation_answer(parse_series(run(summary)))
    assert answer["base"] == {"step": None, "eval_loss": 2.0, "eval_mean_token_accuracy": 0.5}
    assert answer["tuned"] is not None and answer["tuned"]["eval_loss"] == 1.5
    assert answer["change"] == {"eval_loss": -0.5, "eval_mean_token_accuracy": 0.1}


def test_malformed_evaluation_lines_are_skipped_and_named() -> None:
    bad = run(
        MARKER + '{"type":"eval","step":3,"eval_loss":',  # cut JSON
        evaluation(3, 1.0, 0.5, "teacher"),  # a model that is neither base nor tuned
        MARKER + json.dumps({"type": "eval", "step": 3, "eval_loss": "low"}),
        sample(99),  # index out of 0..49
        MARKER + json.dumps({"type": "sample", "index": 2, "prompt": ["a"]}),
        MARKER + '{"type":"sample","index":3,"prompt":"' + "x" * 70_000 + '"}',  # too long
        MARKER + "{not json",
        evaluation(4, 1.1, 0.7, "tuned"),
    )
    series = parse_series(bad)
    answer = evaluation_answer(series)
    assert answer["skipped"] == {"lines": 7, "eval_lines": 3, "sample_lines": 3}
    assert answer["tuned"] is not None and answer["tuned"]["step"] == 4
    assert answer["samples"] is None


def test_a_long_sample_line_is_read_and_its_texts_cut() -> None:
    # 4 texts of 2,000 characters, escaped as \uXXXX: far beyond the 4,096 of other lines.
    text = "é" * 2000
    line = MARKER + json.dumps(
        {
            "type": "sample",
            "index": 0,
            "prompt": text,
            "reference": text,
            "base": text,
            "tuned": "y" * 3000,
        },
        ensure_ascii=True,
    )
    assert len(line) > 24_000
    series = parse_series(run(line))
    assert series.skipped == 0
    [only] = evaluation_answer(series)["samples"]
    assert only["prompt"] == text and len(only["tuned"]) == SAMPLE_TEXT_CHARS


def test_sample_lines_never_count_as_skipped_in_the_metrics_series() -> None:
    series = parse_series(RUN)
    assert series.skipped == 0 and len(series) == 4


def test_results_csv_is_openais_and_pandas_reads_it_as_it_comes() -> None:
    data = results_csv(parse_series(RUN))
    header = data.split(b"\n", 1)[0]
    assert header == b"step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    frame = pandas.read_csv(io.BytesIO(data))
    assert list(frame["step"]) == [1, 2, 3, 4]
    assert list(frame["train_loss"]) == [2.0, 1.5, 1.2, 1.0]
    assert frame["train_accuracy"].iloc[0] == 0.45 and pandas.isna(frame["train_accuracy"].iloc[3])
    # Validation where the tuned model was evaluated (steps 2 and 4), empty elsewhere.
    assert pandas.isna(frame["valid_loss"].iloc[0]) and frame["valid_loss"].iloc[1] == 1.6
    assert frame["valid_mean_token_accuracy"].iloc[3] == 0.70
