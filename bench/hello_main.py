"""The cold-start baseline: a bare functions-framework function, nothing imported but it.

``functions-framework --source bench/hello_main.py --target hello`` answers
every path (``/healthz`` included) with ``200 ok``.
"""

from __future__ import annotations

import functions_framework
from flask import Request


@functions_framework.http
def hello(request: Request) -> str:
    return "ok"
