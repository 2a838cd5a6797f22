"""The dry run's token count, in a process of its own: ``python -I tokenizer_worker.py PATH``.

A caller names the model, so the ``tokenizer.json`` is the caller's: its regexes
can make the ``tokenizers`` library panic (a pyo3 ``PanicException``, a
``BaseException``) or run for ever. Loaded and run here, neither can end or stall
the function's worker: this process may die or be killed; the parent
(:class:`finetune_api.jobs.tokenizer.WorkerCounter`) then counts by the rule.

Imports only the standard library and ``tokenizers`` (run with ``-I``: no
environment, no user site, nothing of the service's). Protocol, one JSON value
per line: this process answers ``{"ready": true}`` once the file is loaded,
then for every line it reads (a list of texts) a line ``{"counts": [...]}``;
on any failure one line ``{"error": "<type>"}`` and it exits.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from typing import Any


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    path, memory = argv[1], int(argv[2])
    # Address space and CPU seconds are bounded here too (the parent also kills on its deadline).
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    try:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(path)
    except BaseException as error:  # noqa: BLE001 - a panic included: report, then exit
        _reply({"error": type(error).__name__})
        return 1
    _reply({"ready": True})
    for line in sys.stdin:
        try:
            texts = json.loads(line)
            counts = [len(encoding) for encoding in tokenizer.encode_batch_fast(texts)]
        except BaseException as error:  # noqa: BLE001 - a panic included
            _reply({"error": type(error).__name__})
            return 1
        _reply({"counts": counts})
    return 0


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stdout.flush()
    os._exit(code)  # no interpreter teardown: a poisoned tokenizer cannot hang it
