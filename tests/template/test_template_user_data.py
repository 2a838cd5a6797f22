"""train.py trains on the user's own file: fetched from its URL, sha256 checked, then trained on.

runtime_config.json names the file as the service's files/ check recorded it
(``{"source", "url", "sha256", "bytes", "format", "examples"}``, dataset_id null);
the URL is short-lived and signed, so it is a credential and never appears in a
log line or an error. The fetch tests run in this process; the CPU runs are
``python train.py`` in a job's working area with Baseten's environment and no
DATASET_ID, the files served over http:// from a loopback server or as file://.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import ft.config_io
import ft.data
import ft.errors
import ft.launch
import pytest
from template_helpers import EXAMPLE_RUNTIME_CONFIG, RunTrain, sentence, write_jsonl

# The signature of the "signed" URLs below: it must never be printed anywhere.
SIGNATURE = "X-Goog-Signature=5ec7e75ec7e7deadbeef"
QUERY = f"?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=sa%40p.iam&{SIGNATURE}"


class _Server:
    """A loopback HTTP server over one folder that records what it was asked for."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        self.fail_next: list[int] = []  # statuses to answer before serving normally
        self.cut_short = False  # promise the whole file, send 10 bytes, hang up
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                if server.fail_next:
                    self.send_error(server.fail_next.pop(0))
                    return
                if server.cut_short:
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    self.wfile.write(b'{"text": "')
                    self.close_connection = True
                    return
                super().do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
        )
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, name: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/{name}{QUERY}"


@pytest.fixture
def http_files(tmp_path: Path) -> Iterator[_Server]:
    root = tmp_path / "served"
    root.mkdir()
    server = _Server(root)
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def file_entry(path: Path, url: str, source: str = "file-abc123", **changes: Any) -> dict[str, Any]:
    """The runtime_config.json object for `path`, as the service's check records it."""
    data = path.read_bytes()
    lines = [line for line in data.decode().splitlines() if line.strip()]
    first = json.loads(lines[0])
    fmt = "chat" if "messages" in first else "text" if "text" in first else "prompt_completion"
    return {
        "source": source,
        "url": url,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "format": fmt,
        "examples": len(lines),
        **changes,
    }


def data_file(entry: dict[str, Any], field: str = "training_file") -> Any:
    return ft.config_io.parse_data_file(entry, field)


@pytest.fixture
def rows_file(tmp_path: Path) -> Path:
    rows = [{"text": sentence(i)} for i in range(50)]
    return write_jsonl(tmp_path / "mine.jsonl", rows)


# ----------------------------------------------------------------------- runtime config


def test_training_file_replaces_dataset_id(rows_file: Path) -> None:
    entry = file_entry(rows_file, rows_file.as_uri())
    raw = {**EXAMPLE_RUNTIME_CONFIG, "dataset_id": None, "training_file": entry}
    config = ft.config_io.load_runtime_config({"RUNTIME_CONFIG": json.dumps(raw)})
    assert config.dataset_id is None
    assert config.training_file.sha256 == entry["sha256"]
    assert config.training_file.examples == 50
    assert config.validation_file is None
    assert config.data_source == f"training_file file-abc123 (sha256 {entry['sha256']})"
    assert "file://" not in repr(config.training_file)


@pytest.mark.parametrize(
    ("changes", "environ", "message"),
    [
        ({}, {"DATASET_ID": "d"}, "exactly one of 'dataset_id' (DATASET_ID) and 'training_file'"),
        ({"dataset_id": "d"}, {}, "exactly one of 'dataset_id' (DATASET_ID) and 'training_file'"),
        ({"training_file": None}, {}, "neither 'dataset_id' nor 'training_file'"),
        ({"training_file": "file-abc"}, {}, "'training_file' must be an object or null"),
        ({"training_file": {"sha256": "0" * 64}}, {}, "training_file.url must be"),
        (
            {"training_file": {"url": "ftp://h/x?sig=1", "sha256": "0" * 64}},
            {},
            "training_file.url must be an http, https or file URL, not 'ftp'",
        ),
        ({"training_file": {"url": "https://h/x", "sha256": "abc"}}, {}, "sha256 must be 64 hex"),
        (
            {"training_file": {"url": "https://h/x", "sha256": "0" * 64, "bytes": -1}},
            {},
            "training_file.bytes must be a non-negative integer",
        ),
        (
            {"training_file": {"url": "https://h/x", "sha256": "0" * 64, "format": "csv"}},
            {},
            "training_file.format must be one of chat, text, prompt_completion",
        ),
        ({"validation_file": {"url": "", "sha256": "0" * 64}}, {}, "validation_file.url must"),
        ({"resume_from": {"training_job_id": "j"}}, {}, "'resume_from' must be null or"),
    ],
)
def test_unusable_data_config_is_a_clear_error(
    changes: dict[str, Any], environ: dict[str, str], message: str
) -> None:
    entry = {"source": "file-abc", "url": "https://h/x?sig=1", "sha256": "0" * 64}
    raw = {**EXAMPLE_RUNTIME_CONFIG, "dataset_id": None, "training_file": entry, **changes}
    with pytest.raises(ft.errors.TemplateError) as caught:
        ft.config_io.load_runtime_config({"RUNTIME_CONFIG": json.dumps(raw), **environ})
    assert message in str(caught.value)
    assert "sig=1" not in str(caught.value)


# ----------------------------------------------------------------------- fetching


def test_file_url_is_fetched_and_checked(
    rows_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="train")
    target = tmp_path / "job" / "user_data"
    fetched = ft.data.fetch_data_file(data_file(file_entry(rows_file, rows_file.as_uri())), target)
    assert fetched == target / "training_file.jsonl"
    assert fetched.read_bytes() == rows_file.read_bytes()
    assert sorted(p.name for p in target.iterdir()) == ["training_file.jsonl"]  # no .part
    assert "sha256 verified" in caplog.text and "file-abc123" in caplog.text


def test_http_url_is_streamed_in_chunks_and_its_query_never_logged(
    rows_file: Path,
    tmp_path: Path,
    http_files: _Server,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    (http_files.root / "upload.jsonl").write_bytes(rows_file.read_bytes())
    # Small chunks: the file arrives in many reads, never as one.
    monkeypatch.setattr(ft.data, "DOWNLOAD_CHUNK_BYTES", 512)
    http_files.fail_next = [503]  # one transient failure first: retried
    monkeypatch.setattr(ft.data.time, "sleep", lambda _: None)
    entry = file_entry(rows_file, http_files.url("upload.jsonl"), source="gs://bucket/mine.jsonl")
    fetched = ft.data.fetch_data_file(data_file(entry), tmp_path / "user_data")
    assert fetched.read_bytes() == rows_file.read_bytes()
    assert len(rows_file.read_bytes()) > 4 * 512
    assert http_files.requests == [f"/upload.jsonl{QUERY}"] * 2  # the signed URL, as given
    assert "retrying (attempt 2 of 3)" in caplog.text
    assert "gs://bucket/mine.jsonl" in caplog.text
    assert SIGNATURE not in caplog.text and "127.0.0.1" not in caplog.text


def test_sha256_mismatch_fails_naming_both_digests_and_leaves_nothing(
    rows_file: Path, tmp_path: Path, http_files: _Server
) -> None:
    entry = file_entry(rows_file, http_files.url("upload.jsonl"))
    # The object was replaced after the check: same size, other bytes.
    changed = rows_file.read_bytes().replace(b"fox", b"dog")
    assert len(changed) == entry["bytes"]
    (http_files.root / "upload.jsonl").write_bytes(changed)
    target = tmp_path / "user_data"
    with pytest.raises(ft.errors.TemplateError) as caught:
        ft.data.fetch_data_file(data_file(entry), target)
    actual = hashlib.sha256(changed).hexdigest()
    assert str(caught.value) == (
        f"training_file: sha256 mismatch: expected {entry['sha256']}, got {actual} "
        f"({len(changed)} bytes read from file-abc123); the file changed after it was checked"
    )
    assert SIGNATURE not in str(caught.value)
    assert not target.exists()  # no partial file, no empty folder


def test_a_longer_file_is_cut_off_at_the_recorded_size(
    rows_file: Path, tmp_path: Path, http_files: _Server
) -> None:
    entry = file_entry(rows_file, http_files.url("upload.jsonl"))
    (http_files.root / "upload.jsonl").write_bytes(rows_file.read_bytes() * 3)
    with pytest.raises(ft.errors.TemplateError, match=r"^training_file: size mismatch: expected"):
        ft.data.fetch_data_file(data_file(entry), tmp_path / "user_data")
    assert not (tmp_path / "user_data").exists()


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (
            403,
            "training_file: download of file-abc123 failed: HTTP 403 "
            "(the read URL may have expired)",
        ),
        (404, "training_file: download of file-abc123 failed: HTTP 404"),
    ],
)
def test_a_refused_download_is_a_clear_error_without_the_url(
    rows_file: Path,
    tmp_path: Path,
    http_files: _Server,
    status: int,
    message: str,
) -> None:
    http_files.fail_next = [status]
    entry = file_entry(rows_file, http_files.url("upload.jsonl"))
    with pytest.raises(ft.errors.TemplateError) as caught:
        ft.data.fetch_data_file(data_file(entry), tmp_path / "user_data")
    assert str(caught.value) == message
    assert len(http_files.requests) == 1  # a 4xx is not retried
    assert not (tmp_path / "user_data").exists()


def test_a_body_cut_short_is_retried_then_a_clear_error(
    rows_file: Path,
    tmp_path: Path,
    http_files: _Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ft.data.time, "sleep", lambda _: None)
    http_files.cut_short = True
    entry = file_entry(rows_file, http_files.url("upload.jsonl"))
    with pytest.raises(ft.errors.TemplateError) as caught:
        ft.data.fetch_data_file(data_file(entry), tmp_path / "user_data")
    # Not a "sha256 mismatch": the file did not change, the connection broke.
    assert str(caught.value) == (
        "training_file: download of file-abc123 failed: the connection closed after 10 of "
        "100000 bytes (after 3 attempts)"
    )
    assert len(http_files.requests) == 3
    assert not (tmp_path / "user_data").exists()


def test_a_missing_local_file_is_a_clear_error(tmp_path: Path) -> None:
    entry = {"source": "gs://b/o", "url": (tmp_path / "gone.jsonl").as_uri(), "sha256": "0" * 64}
    with pytest.raises(ft.errors.TemplateError, match=r"^training_file: cannot read gs://b/o: "):
        ft.data.fetch_data_file(data_file(entry), tmp_path / "user_data")
    assert not (tmp_path / "user_data").exists()


def test_a_failed_validation_file_removes_the_training_file_too(
    rows_file: Path, tmp_path: Path
) -> None:
    pytest.importorskip("datasets")
    good = file_entry(rows_file, rows_file.as_uri())
    bad = {**good, "source": "file-val", "sha256": "1" * 64}
    raw = {**EXAMPLE_RUNTIME_CONFIG, "dataset_id": None, "training_file": good}
    config = ft.config_io.load_runtime_config(
        {"RUNTIME_CONFIG": json.dumps({**raw, "validation_file": bad})}
    )
    target = tmp_path / "user_data"
    with pytest.raises(ft.errors.TemplateError, match=r"^validation_file: sha256 mismatch"):
        ft.data.fetch_user_files(config, target)
    assert not target.exists()

    config = ft.config_io.load_runtime_config({"RUNTIME_CONFIG": json.dumps(raw)})
    fetched = ft.data.fetch_user_files(config, target)
    assert fetched == {"training_file": target / "training_file.jsonl"}
    dataset, fmt, eval_dataset = ft.data.load_training_data(config, None, fetched)
    assert (len(dataset), fmt, eval_dataset) == (50, "text", None)
    assert dataset["text"] == [sentence(i) for i in range(50)]


def test_a_validation_file_is_the_eval_set_beside_a_dataset_id_too(
    rows_file: Path, tmp_path: Path
) -> None:
    pytest.importorskip("datasets")
    eval_path = write_jsonl(tmp_path / "eval.jsonl", [{"text": sentence(i)} for i in (90, 91)])
    raw = {
        **EXAMPLE_RUNTIME_CONFIG,
        "dataset_id": str(rows_file),
        "validation_file": file_entry(eval_path, eval_path.as_uri(), source="gs://b/eval"),
    }
    config = ft.config_io.load_runtime_config({"RUNTIME_CONFIG": json.dumps(raw)})
    fetched = ft.data.fetch_user_files(config, tmp_path / "user_data")
    assert list(fetched) == ["validation_file"]
    dataset, fmt, eval_dataset = ft.data.load_training_data(config, None, fetched)
    assert (len(dataset), fmt) == (50, "text")
    assert eval_dataset["text"] == [sentence(90), sentence(91)]

    chat = write_jsonl(tmp_path / "chat.jsonl", chat_rows(0, 2))
    raw["validation_file"] = file_entry(chat, chat.as_uri())
    config = ft.config_io.load_runtime_config({"RUNTIME_CONFIG": json.dumps(raw)})
    fetched = ft.data.fetch_user_files(config, tmp_path / "other")
    with pytest.raises(
        ft.errors.TemplateError,
        match=r"^validation_file: its rows are 'messages' but the training data is 'text'$",
    ):
        ft.data.load_training_data(config, None, fetched)


def test_a_file_whose_rows_differ_from_the_recorded_format_is_refused(
    rows_file: Path, tmp_path: Path
) -> None:
    pytest.importorskip("datasets")
    entry = file_entry(rows_file, rows_file.as_uri(), format="chat")
    raw = {**EXAMPLE_RUNTIME_CONFIG, "dataset_id": None, "training_file": entry}
    config = ft.config_io.load_runtime_config({"RUNTIME_CONFIG": json.dumps(raw)})
    fetched = ft.data.fetch_user_files(config, tmp_path / "user_data")
    with pytest.raises(
        ft.errors.TemplateError, match=r"^training_file: recorded as 'chat' but its rows are 'text'"
    ):
        ft.data.load_training_data(config, None, fetched)


# ----------------------------------------------------------------------- CPU runs

HP = {
    "learning_rate": 0.01,
    "num_epochs": 2,
    "batch_size": 2,
    "gradient_accumulation_steps": 1,
    "max_seq_length": 64,
    "lora_rank": 2,
    "lora_alpha": 4,
    "lora_dropout": 0.0,
    "seed": 11,
    "validation_split": 0.25,  # ignored: the validation_file is the evaluation set
}


def chat_rows(start: int, count: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": sentence(i, 5)},
                {"role": "assistant", "content": sentence(i + 7, 6)},
            ]
        }
        for i in range(start, start + count)
    ]


def user_data_config(model: Path, training: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        **EXAMPLE_RUNTIME_CONFIG,
        "dataset_id": None,
        "model_id": str(model),
        "hyperparameters": HP,
        "training_file": training,
        "validation_file": None,
        **extra,
    }


@pytest.mark.usefixtures("training_stack")
def test_a_run_trains_on_exactly_the_uploaded_examples_and_evaluates_on_the_validation_file(
    run_train: RunTrain, tiny_model: Path, tmp_path: Path, http_files: _Server
) -> None:
    """Training file over http:// (signed-URL shape), validation file as file://."""
    train_rows, eval_rows = chat_rows(0, 10), chat_rows(100, 3)
    train_path = write_jsonl(http_files.root / "train.jsonl", train_rows)
    eval_path = write_jsonl(tmp_path / "eval.jsonl", eval_rows)
    training = file_entry(train_path, http_files.url("train.jsonl"), source="file-train01")
    validation = file_entry(eval_path, eval_path.as_uri(), source="gs://bucket/eval.jsonl")
    config = user_data_config(tiny_model, training, validation_file=validation)
    run = run_train(DATASET_ID=None, MODEL_ID=str(tiny_model), RUNTIME_CONFIG=config)
    assert run.returncode == 0, run.describe()

    summary = run.summary
    # Exactly the file's lines: 10 examples, 10 / batch 2 = 5 steps per epoch, 2 epochs;
    # validation_split did not take any of them.
    assert summary["num_examples"] == len(train_path.read_text().splitlines()) == 10
    assert (
        summary["global_step"]
        == 10
        == ft.launch.expected_optimizer_steps(10, ft.config_io.Hyperparameters(**HP))
    )
    assert [r["step"] for r in run.progress] == list(range(1, 11))
    assert summary["dataset_format"] == "messages"
    assert summary["dataset_id"] is None
    assert summary["training_file"] == {
        "source": "file-train01",
        "sha256": training["sha256"],
        "bytes": training["bytes"],
    }
    # The first example trained on is the file's first line, through the chat template.
    assert summary["first_example"] == (
        f"<|user|> {sentence(0, 5)} </s> <|assistant|> {sentence(7, 6)} </s> "
    )
    # The evaluation set is the validation file: its 3 examples, the base model's before
    # the first step, the tuned model's at each epoch's end.
    assert summary["num_eval_examples"] == 3
    evals = [r for r in run.metrics if r["type"] == "eval"]
    assert [(r["model"], r["step"], r["epoch"]) for r in evals] == [
        ("base", 0, 0.0),
        ("tuned", 5, 1.0),
        ("tuned", 10, 2.0),
    ]
    # eval_samples defaults to 5 with a validation set: all 3 held-out chats answered.
    assert summary["hyperparameters"]["eval_samples"] == 5
    assert [s["index"] for s in summary["samples"]] == [0, 1, 2]
    assert run.stdout.count('"type":"sample"') == 3
    assert "evaluating on the validation_file's 3 examples" in run.stdout
    assert "validation_split is ignored" in run.stdout
    # Fetched once, by the signed URL; logged by source and digest only.
    assert http_files.requests == [f"/train.jsonl{QUERY}"]
    assert f"training_file: fetched file-train01, {training['bytes']} bytes, sha256 verified" in (
        run.stdout
    )
    everything = run.stdout + run.stderr + (run.final_dir / "training_summary.json").read_text()
    assert SIGNATURE not in everything and "X-Goog-Credential" not in everything
    assert str(eval_path) not in everything
    # The verified copies stay in the job's working area, nothing partial beside them.
    assert run.app_dir is not None
    kept = sorted(p.name for p in (run.app_dir / "user_data").iterdir())
    assert kept == ["training_file.jsonl", "validation_file.jsonl"]
    assert (run.app_dir / "user_data" / "training_file.jsonl").read_bytes() == (
        train_path.read_bytes()
    )


@pytest.mark.usefixtures("training_stack")
def test_prompt_completion_file_trains(
    run_train: RunTrain, tiny_model: Path, tmp_path: Path
) -> None:
    rows = [{"prompt": sentence(i, 4), "completion": " " + sentence(i + 3, 3)} for i in range(6)]
    path = write_jsonl(tmp_path / "pc.jsonl", rows)
    hp = {**HP, "num_epochs": 1, "validation_split": 0.0}
    config = {
        **user_data_config(tiny_model, file_entry(path, path.as_uri())),
        "hyperparameters": hp,
    }
    run = run_train(DATASET_ID=None, MODEL_ID=str(tiny_model), RUNTIME_CONFIG=config)
    assert run.returncode == 0, run.describe()
    assert run.summary["dataset_format"] == "prompt_completion"
    assert run.summary["num_examples"] == 6
    assert run.summary["global_step"] == 3
    assert run.summary["first_example"] == sentence(0, 4) + " " + sentence(3, 3)


@pytest.mark.usefixtures("training_stack")
def test_a_changed_file_stops_the_job_before_training_and_leaves_nothing(
    run_train: RunTrain, tiny_model: Path, tmp_path: Path, http_files: _Server
) -> None:
    path = write_jsonl(tmp_path / "checked.jsonl", chat_rows(0, 4))
    training = file_entry(path, http_files.url("train.jsonl"), source="file-train01")
    # The object was overwritten after the check: same size, other words.
    served = path.read_bytes().replace(b"fox", b"dog")
    assert served != path.read_bytes() and len(served) == len(path.read_bytes())
    (http_files.root / "train.jsonl").write_bytes(served)
    run = run_train(
        DATASET_ID=None,
        MODEL_ID=str(tiny_model),
        RUNTIME_CONFIG=user_data_config(tiny_model, training),
    )
    assert run.returncode == 2, run.describe()
    assert run.error_line == (
        f"train.py: error: training_file: sha256 mismatch: expected {training['sha256']}, "
        f"got {hashlib.sha256(served).hexdigest()} ({len(served)} bytes read from "
        "file-train01); the file changed after it was checked"
    )
    assert "Traceback" not in run.stderr
    assert SIGNATURE not in run.stdout + run.stderr
    assert run.app_dir is not None and not (run.app_dir / "user_data").exists()
    assert not run.checkpoint_dir.exists() or not any(run.checkpoint_dir.iterdir())
