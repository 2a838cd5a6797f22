"""`make run` prints the base model beside the tuned one from GET .../evaluation's answer."""

from __future__ import annotations

from typing import Any

import pytest

from scripts.demo import SAMPLE_PREVIEW_CHARS, evaluation_report

ANSWER = {
    "base": {"eval_loss": 2.5512, "eval_mean_token_accuracy": 0.4012},
    "tuned": {"eval_loss": 0.6125, "eval_mean_token_accuracy": 0.7811},
    "change": {"eval_loss": -1.9387, "eval_mean_token_accuracy": 0.3799},
    "samples": [
        {
            "prompt": "user: where is my\n  refund?",
            "reference": "Here is how refunds work.",
            "base": "I am a language model. " * 40,
            "tuned": "Here is how refunds work.",
        },
        {"prompt": "p", "reference": "r", "base": "b", "tuned": "t"},
    ],
}


def test_the_table_and_the_first_sample_pair() -> None:
    lines = evaluation_report(ANSWER)
    assert lines[1].split() == ["eval", "loss", "2.5512", "0.6125", "-1.9387"]
    assert lines[2].split() == ["token", "accuracy", "40.1%", "78.1%", "+38.0", "pts"]
    assert lines[3] == "  sample 1 of 2 (held out, answered greedily by each model):"
    assert lines[4] == "    prompt:    user: where is my refund?"
    assert lines[6].startswith("    base:      I am a language model.") and lines[6].endswith("…")
    assert len(lines[6]) == len("    base:      ") + SAMPLE_PREVIEW_CHARS
    assert lines[7] == "    tuned:     Here is how refunds work."


@pytest.mark.parametrize(
    "answer",
    [
        None,
        [],
        {},
        {"base": None, "tuned": None, "change": None, "samples": None},
        {"base": {"eval_loss": "x"}, "tuned": {"eval_loss": True}, "samples": [1, "s"]},
    ],
)
def test_a_job_without_an_evaluation_shows_dashes_and_no_samples(answer: Any) -> None:
    lines = evaluation_report(answer)
    assert lines[1].split() == ["eval", "loss", "—", "—", "—"]
    assert lines[2].split() == ["token", "accuracy", "—", "—", "—"]
    assert lines[3:] == ["  no samples"]
