"""Cloud Run functions entry points (deploy each with ``--entry-point NAME``)."""

from __future__ import annotations

import json

import functions_framework
from cloudevents.exceptions import GenericException
from cloudevents.http import CloudEvent
from flask import Request, Response
from werkzeug.exceptions import HTTPException

from finetune_api.edge.http_app import framework_error_response
from finetune_api.edge.pubsub import handle_pubsub
from finetune_api.edge.routes import handle_poll, handle_train_http


@functions_framework.http
def train_http(request: Request) -> Response:
    """HTTPS: submit (POST /jobs), read, list and stop training jobs; returns JSON."""
    return handle_train_http(request)


@functions_framework.cloud_event
def train_pubsub(cloud_event: CloudEvent) -> None:
    """Pub/Sub message: submit the training job its data describes.

    Returns normally for a bad message (logged, acknowledged); raises on a
    transient failure so a trigger deployed with --retry redelivers it.
    """
    handle_pubsub(cloud_event.get_attributes(), cloud_event.get_data())


@functions_framework.http
def poll_jobs(request: Request) -> Response:
    """HTTPS, called by Cloud Scheduler: report status changes and new checkpoints."""
    return handle_poll(request)


@functions_framework.errorhandler(HTTPException)  # type: ignore[untyped-decorator]
@functions_framework.errorhandler(RecursionError)  # type: ignore[untyped-decorator]
@functions_framework.errorhandler(json.JSONDecodeError)  # type: ignore[untyped-decorator]
@functions_framework.errorhandler(UnicodeDecodeError)  # type: ignore[untyped-decorator]
@functions_framework.errorhandler(GenericException)  # type: ignore[untyped-decorator]
def framework_error(error: Exception) -> Response:
    """An error the framework raises before any entry point runs (its own routing, or
    decoding a CloudEvent body): the same JSON shape, never an HTML page or a 500."""
    return framework_error_response(error)
