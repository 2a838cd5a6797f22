"""The job index's page cost, and the Uploads API and the index on Cloud Storage.

* The cost of one ``/v1/fine_tuning/jobs`` page follows ``limit``, not the history:
  counted on the index's own store (names listed, records read).
* With ``FILES_BUCKET`` (fake-gcs-server through the real client): 70 parts are
  joined by Cloud Storage compose in rounds of 32, and the File is checked like any
  other; jobs are listed newest first from the bucket.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import openai
import pytest

from finetune_api.core.schemas import TrainingRequest
from finetune_api.jobs.index import JobIndex, LocalObjects
from loopback.fake_secret_manager import FakeSecretManager
from loopback.functions import FunctionServer
from loopback.servers import LocalGcs
from sandbox import Sandbox
from tests.conftest import function_env

KEY = "sk-test-openai-gcs-0001"
LINE = json.dumps({"text": "a line of training text"}) + "\n"


class CountingObjects(LocalObjects):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.listed: list[int] = []
        self.read_count = 0

    def names(
        self, prefix: str, start_after: str | None, count: int, *, inclusive: bool = False
    ) -> list[str]:
        self.listed.append(count)
        return super().names(prefix, start_after, count, inclusive=inclusive)

    def read(self, name: str) -> tuple[bytes, str] | None:
        self.read_count += 1
        return super().read(name)


def _job(index: int) -> tuple[Any, Any]:
    job = SimpleNamespace(
        training_project_id="proj1",
        training_job_id=f"job{index:04d}",
        job_name=f"run-{index}",
        created_at=f"2026-12-01T00:{index // 60:02d}:{index % 60:02d}Z",
    )
    request = TrainingRequest(model_id="Qwen/Qwen3-0.6B", training_file="file-x")
    return job, request


@pytest.mark.parametrize("history", [30, 300])
def test_a_page_costs_limit_reads_whatever_the_history(tmp_path: Path, history: int) -> None:
    store = CountingObjects(tmp_path)
    index = JobIndex(store)
    for number in range(history):
        job, request = _job(number)
        labels = {"metadata": {"parity": str(number % 2)}, "suffix": None}
        index.record(job, request, labels)
    store.listed.clear()
    store.read_count = 0
    page, more = index.page(None, 5)
    assert more and [r["training_job_id"] for r, _ in page] == [
        f"job{n:04d}" for n in range(history - 1, history - 6, -1)
    ]
    assert (store.listed, store.read_count) == ([6], 5)
    # The next page starts after the last id: again one listing and five reads.
    store.listed.clear()
    store.read_count = 0
    second, _ = index.page(page[-1][0]["id"], 5)
    assert second[0][0]["training_job_id"] == f"job{history - 6:04d}"
    assert (store.listed, store.read_count) == ([6], 5)
    # One metadata pair: its own prefix, the same cost.
    store.listed.clear()
    store.read_count = 0
    odd, _ = index.page(None, 5, {"parity": "1"})
    assert all(r["metadata"] == {"parity": "1"} for r, _ in odd) and len(odd) == 5
    assert (store.listed, store.read_count) == ([6], 5)


def _pairs(number: int) -> dict[str, str]:
    # ``a`` matches every other job, ``b`` every third: both at once, every sixth; and
    # ``rare`` only two jobs of the history (the worst case of the old scan: it read
    # every record carrying the first pair to find them).
    pairs = {"a": str(number % 2), "b": str(number % 3)}
    if number in (3, 1500):
        pairs["rare"] = "yes"
    return pairs


def _all_pages(
    index: JobIndex, store: CountingObjects, limit: int, wanted: dict[str, str]
) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Follow the pages as a client does (the SDK: ``after`` = the last item's id; an
    empty page with has_more: its ``cursor``); every page's (listings, reads, items)."""
    after: str | None = None
    seen: list[str] = []
    costs = []
    for _ in range(1000):
        store.listed.clear()
        store.read_count = 0
        page = index.scan(after, limit, wanted)
        costs.append((len(store.listed), store.read_count, len(page.records)))
        seen += [record["training_job_id"] for record, _ in page.records]
        if not page.has_more:
            return seen, costs
        assert page.cursor is not None and page.cursor != after, "every page makes progress"
        after = page.cursor
    raise AssertionError("no end")


def test_a_page_with_two_metadata_filters_reads_a_bounded_number_of_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 27 item 8: whatever the filters, one page makes at most MAX_LISTINGS
    listings and reads at most ``limit`` records (the old scan read every record the
    first pair marked: here 1,000 of them for the rare pair)."""
    from finetune_api.jobs import index as index_module

    store = CountingObjects(tmp_path)
    index = JobIndex(store)
    history = 2000
    for number in range(history):
        job, request = _job(number)
        index.record(job, request, {"metadata": _pairs(number), "suffix": None})

    def expected(wanted: dict[str, str]) -> list[str]:
        ids = [n for n in range(history) if all(_pairs(n).get(k) == v for k, v in wanted.items())]
        return [f"job{n:04d}" for n in sorted(ids, reverse=True)]

    for wanted in (
        {"a": "0", "rare": "yes"},
        {"a": "1", "b": "2"},
        {"a": "0", "b": "1", "rare": "yes"},
    ):
        seen, costs = _all_pages(index, store, 5, wanted)
        assert seen == expected(wanted), wanted
        assert all(
            listings <= index_module.MAX_LISTINGS and reads <= 5 for listings, reads, _ in costs
        )
    # The rare pair's page: its listings, then only the two matching records.
    store.listed.clear()
    store.read_count = 0
    page = index.scan(None, 20, {"a": "0", "rare": "yes"})
    assert [r["training_job_id"] for r, _ in page.records] == ["job1500"] and not page.has_more
    assert store.read_count == 1 and len(store.listed) <= 4

    # With a tiny budget the listings run out: pages come back shorter, some empty,
    # each with has_more and a cursor; following them still lists each match once.
    monkeypatch.setattr(index_module, "MAX_LISTINGS", 3)
    monkeypatch.setattr(index_module, "LIST_BATCH", 7)
    for wanted in ({"a": "0", "rare": "yes"}, {"a": "1", "b": "2"}):
        seen, costs = _all_pages(index, store, 5, wanted)
        assert seen == expected(wanted), wanted
        assert all(listings <= 3 and reads <= 5 for listings, reads, _ in costs)
        assert any(items < 5 for _, _, items in costs[:-1]), "some pages came back short"


def test_a_replayed_submit_is_indexed_once(tmp_path: Path) -> None:
    index = JobIndex(LocalObjects(tmp_path))
    job, request = _job(1)
    first = index.record(job, request, {"metadata": {"a": "b"}, "suffix": "s"})
    again = index.record(job, request, {"metadata": {"a": "c"}, "suffix": "t"})
    assert first == again
    page, more = index.page(None, 10)
    assert len(page) == 1 and not more and page[0][0]["metadata"] == {"a": "b"}


@pytest.fixture(scope="module")
def gcs_world(
    sandbox_server: Sandbox,
    secret_manager: FakeSecretManager,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[FunctionServer, Sandbox]]:
    with LocalGcs() as gcs:
        gcs.client().create_bucket("files-bucket")
        tmp = tmp_path_factory.mktemp("openai-gcs-tmp")
        env = function_env(
            sandbox_server,
            secret_manager,
            tmp,
            API_KEYS=KEY,
            FILES_BUCKET="files-bucket",
            STORAGE_EMULATOR_HOST=gcs.url,
        )
        with FunctionServer("train_http", env, threads=8) as server:
            yield server, sandbox_server


def test_seventy_parts_compose_in_rounds_and_jobs_list_from_the_bucket(
    gcs_world: tuple[FunctionServer, Sandbox],
) -> None:
    server, sandbox = gcs_world
    sandbox.reset()
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)
    parts = [(LINE * (n + 1)).encode() for n in range(70)]
    upload = sdk.uploads.create(
        bytes=sum(len(p) for p in parts),
        filename="parts.jsonl",
        mime_type="application/jsonl",
        purpose="fine-tune",
    )
    ids = [sdk.uploads.parts.create(upload.id, data=part).id for part in parts]
    done = sdk.uploads.complete(upload.id, part_ids=ids)
    assert done.status == "completed" and done.file is not None
    file = sdk.files.retrieve(done.file.id)
    assert file.status == "processed"
    assert file.model_extra["validation"]["examples"] == sum(range(1, 71))
    assert sdk.files.content(file.id).content == b"".join(parts)
    # Completing again answers the same Upload; the parts are gone.
    assert sdk.uploads.complete(upload.id, part_ids=ids).file.id == file.id  # type: ignore[union-attr]

    made = [
        sdk.fine_tuning.jobs.create(
            model="Qwen/Qwen3-0.6B", training_file=file.id, metadata={"n": str(n)}
        ).id
        for n in range(3)
    ]
    listed = [job.id for job in sdk.fine_tuning.jobs.list(limit=1)]
    assert listed == list(reversed(made))
    assert [j.id for j in sdk.fine_tuning.jobs.list(metadata={"n": "1"})] == [made[1]]
