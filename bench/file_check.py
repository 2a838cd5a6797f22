"""The streamed check of a large chat JSONL held in Cloud Storage, vs only downloading it.

A chat JSONL of ``size`` bytes (1 GiB by default; ``BENCH_FILE_BYTES`` makes a
quick run smaller) is generated as it is uploaded (resumable upload, 32 MiB
chunks, never whole in memory) into fake-gcs-server (``loopback.servers.LocalGcs``,
in-memory backend) as a File's data object. Then, interleaved, ``runs`` times each,
each in a fresh child process (``python -m bench.file_check --child …``):

* **ours**: ``GcsFileStore.stream_data`` into ``JsonlCheck.feed``, then
  ``finish()``: what ``POST /files/{id}/complete`` does with the bytes;
* **baseline**: the same client (``core.cloud_storage.storage_client``) only
  downloading the same object: ``download_blob_to_file`` into a sink that
  drops every chunk.

Throughput is bytes / seconds of that call alone (client built, imports done);
the ratio is ours / baseline throughput (goal ≥ 0.5). The checking child also
reports its peak RSS growth: ``VmHWM`` after the check minus ``VmRSS`` just
before it (goal ≤ 64 MB). Medians.

Then the check alone, in memory, in one more fresh child (``--shapes``), on
32 MiB of each shape (medians of 3, fed in 1 MiB chunks): plain chat (the
baseline of the rows: what the fast path takes), chat with tool calls and
preference pairs (checked line by line), and two hostile files of nothing but
invalid lines, ``1`` and ``{}`` (issue 27: 32 MiB of ``1`` lines took 44 s;
goal ≥ 20 MB/s).

Run alone: ``python -m bench.file_check`` (``BENCH_FILE_BYTES=268435456`` for 256 MiB),
``python -m bench.file_check --shapes`` for the in-memory part only.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.harness import ROOT

BUCKET = "bench-files"
GIB = 1 << 30
WORDS = [
    "order",
    "refund",
    "account",
    "password",
    "shipping",
    "invoice",
    "please",
    "help",
    "thanks",
    "reset",
    "email",
    "delivery",
    "late",
    "damaged",
    "item",
    "return",
    "label",
    "tracking",
    "number",
    "card",
    "charge",
    "twice",
    "subscription",
    "cancel",
    "upgrade",
    "plan",
    "login",
    "code",
    "address",
    "change",
    "warranty",
]


def example_lines(count: int, seed: int = 20) -> list[bytes]:
    """``count`` distinct support chats (system, 1-3 user/assistant turns), ~1 kB each."""
    rng = random.Random(seed)

    def sentence(low: int, high: int) -> str:
        words = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
        return " ".join(words).capitalize() + "."

    lines = []
    for _ in range(count):
        messages = [{"role": "system", "content": "You are Acme's friendly support agent."}]
        for _turn in range(rng.randint(1, 3)):
            messages.append({"role": "user", "content": sentence(8, 30)})
            messages.append({"role": "assistant", "content": sentence(15, 60)})
        lines.append(json.dumps({"messages": messages}).encode() + b"\n")
    return lines


class GeneratedJsonl:
    """A read-only file of at least ``size`` bytes of whole chat lines, made as it is read."""

    def __init__(self, size: int, seed: int = 20) -> None:
        self._pool = example_lines(4000, seed)
        self._rng = random.Random(seed)
        self._left = size
        self._buffer = b""
        self.written = 0
        self.lines = 0

    def read(self, size: int = -1) -> bytes:
        want = size if size >= 0 else 1 << 62
        parts, have = [self._buffer], len(self._buffer)
        while have < want and self._left > 0:
            line = self._pool[self._rng.randrange(len(self._pool))]
            parts.append(line)
            have += len(line)
            self._left -= len(line)
            self.lines += 1
        data = b"".join(parts)
        out, self._buffer = data[:want], data[want:]
        self.written += len(out)
        return out

    def tell(self) -> int:
        return self.written

    def seekable(self) -> bool:
        return False


def _tool_chat(line: bytes) -> bytes:
    """A support chat whose assistant looks the order up with a tool first."""
    value = json.loads(line)
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup_order", "arguments": '{"order": 1042}'},
    }
    value["messages"][2:2] = [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "shipped"}'},
    ]
    value["tools"] = [
        {
            "type": "function",
            "function": {
                "name": "lookup_order",
                "description": "Find an order by its number",
                "parameters": {"type": "object", "properties": {"order": {"type": "integer"}}},
            },
        }
    ]
    return json.dumps(value).encode() + b"\n"


def _preference(line: bytes) -> bytes:
    """The chat's first exchange as a preference pair (a curt answer rejected)."""
    messages = json.loads(line)["messages"]
    pair = {
        "input": {"messages": messages[:2]},
        "preferred_output": [messages[2]],
        "non_preferred_output": [{"role": "assistant", "content": "No."}],
    }
    return json.dumps(pair).encode() + b"\n"


def shape_files(size: int) -> dict[str, bytes]:
    """``size`` bytes (about) of each shape the shapes run measures."""
    pool = example_lines(2000)

    def fill(lines: list[bytes]) -> bytes:
        out, have = [], 0
        while have < size:
            line = lines[len(out) % len(lines)]
            out.append(line)
            have += len(line)
        return b"".join(out)

    return {
        "plain_chat": fill(pool),
        "tool_chat": fill([_tool_chat(line) for line in pool]),
        "preference": fill([_preference(line) for line in pool]),
        "ones": b"1\n" * (size // 2),
        "braces": b"{}\n" * (size // 3),
    }


def _shapes_child(size: int, runs: int) -> dict[str, Any]:
    from finetune_api.files.check import JsonlCheck

    results: dict[str, Any] = {}
    for name, data in shape_files(size).items():
        seconds = []
        for _ in range(runs):
            started = time.perf_counter()
            check = JsonlCheck()
            for start in range(0, len(data), 1 << 20):
                check.feed(data[start : start + (1 << 20)])
            result = check.finish()
            seconds.append(time.perf_counter() - started)
        median = statistics.median(seconds)
        results[name] = {
            "bytes": len(data),
            "seconds": round(median, 3),
            "mb_per_s": round(len(data) / median / 1e6, 1),
            "examples": result.examples,
            "invalid_examples": result.invalid_examples,
        }
    base = results["plain_chat"]["mb_per_s"]
    for item in results.values():
        item["ratio"] = round(item["mb_per_s"] / base, 2)
    return results


def shapes(size: int = 32 << 20, runs: int = 3) -> dict[str, Any]:
    """The in-memory check of each shape, in a fresh child process."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "bench.file_check", "--shapes", str(size), str(runs)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"shapes run failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _child(kind: str, host: str, file_id: str) -> dict[str, Any]:
    """One measured run in this (fresh) process; printed as JSON."""
    from finetune_api.core.cloud_storage import storage_client
    from finetune_api.files.check import JsonlCheck
    from finetune_api.files.stores import DATA, GcsFileStore

    if kind == "baseline":
        client = storage_client(host, "bench")
        blob = client.bucket(BUCKET).blob(f"{DATA}{file_id}.jsonl")

        class Null:
            size = 0

            def write(self, data: bytes) -> int:
                self.size += len(data)
                return len(data)

            def flush(self) -> None:
                return None

        sink = Null()
        client.download_blob_to_file(blob, sink)  # warm: connection and code paths
        sink.size = 0
        rss = _status_kb("VmRSS")
        started = time.perf_counter()
        client.download_blob_to_file(blob, sink)
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "bytes": sink.size, "rss_before_kb": rss}
    store = GcsFileStore(BUCKET, emulator_host=host, project="bench")
    store.data_size(file_id)  # warm: the client, its connection
    rss = _status_kb("VmRSS")
    started = time.perf_counter()
    check = JsonlCheck()
    store.stream_data(file_id, check.feed)
    result = check.finish()
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "bytes": result.bytes,
        "examples": result.examples,
        "invalid_examples": result.invalid_examples,
        "rss_before_kb": rss,
        "peak_growth_kb": _status_kb("VmHWM") - rss,
    }


def _measure(kind: str, host: str, file_id: str) -> dict[str, Any]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "bench.file_check", "--child", kind, host, file_id],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{kind} run failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(size: int | None = None, runs: int = 3) -> dict[str, Any]:
    from finetune_api.files.stores import DATA, new_file_id
    from loopback.servers import LocalGcs

    size = size or int(os.environ.get("BENCH_FILE_BYTES") or GIB)
    with LocalGcs() as gcs:
        client = gcs.client()
        client.create_bucket(BUCKET)
        file_id = new_file_id()
        source = GeneratedJsonl(size)
        started = time.perf_counter()
        blob = client.bucket(BUCKET).blob(f"{DATA}{file_id}.jsonl", chunk_size=32 << 20)
        blob.upload_from_file(source, content_type="application/jsonl")
        upload_s = time.perf_counter() - started
        ours: list[dict[str, Any]] = []
        base: list[dict[str, Any]] = []
        for index in range(runs):
            order = ("ours", "baseline") if index % 2 else ("baseline", "ours")
            for kind in order:
                (ours if kind == "ours" else base).append(_measure(kind, gcs.host, file_id))
    assert all(r["bytes"] == source.written for r in ours + base)
    assert all(r["examples"] == source.lines and r["invalid_examples"] == 0 for r in ours)
    ours_s = statistics.median(r["seconds"] for r in ours)
    base_s = statistics.median(r["seconds"] for r in base)
    growth_mb = max(r["peak_growth_kb"] for r in ours) / 1024
    return {
        "bytes": source.written,
        "lines": source.lines,
        "upload_seconds": round(upload_s, 1),
        "ours_seconds": round(ours_s, 3),
        "baseline_seconds": round(base_s, 3),
        "ours_mb_per_s": round(source.written / ours_s / 1e6, 1),
        "baseline_mb_per_s": round(source.written / base_s / 1e6, 1),
        "ratio": round(base_s / ours_s, 2),
        "peak_rss_growth_mb": round(growth_mb, 1),
        "rss_before_mb": round(statistics.median(r["rss_before_kb"] for r in ours) / 1024, 1),
        "shapes": shapes(runs=runs),
        "runs": {"ours": ours, "baseline": base},
    }


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(_child(sys.argv[2], sys.argv[3], sys.argv[4])))
    elif len(sys.argv) == 4 and sys.argv[1] == "--shapes":
        print(json.dumps(_shapes_child(int(sys.argv[2]), int(sys.argv[3]))))
    elif sys.argv[1:] == ["--shapes"]:
        print(json.dumps(shapes(), indent=2))
    else:
        print(json.dumps({k: v for k, v in run().items() if k != "runs"}, indent=2))
