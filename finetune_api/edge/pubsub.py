"""Pub/Sub submissions: decode the message, submit, decide ack or retry.

Permanent failures (bad payload, Baseten rejects the job) are logged at ERROR
and acknowledged, or Pub/Sub would redeliver them for a day; transient ones
(Baseten or Secret Manager unavailable) are raised so a ``--retry`` trigger
redelivers the message.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from finetune_api.api import submit_body
from finetune_api.core import logs
from finetune_api.core.decoding import decode_json
from finetune_api.core.errors import InvalidRequestError, ServiceError
from finetune_api.core.teams import DEFAULT_TEAM, EVERYONE, Caller, check_team_name
from finetune_api.runtime import acting_for, get_services

_logger = logs.get_logger("pubsub")


class PubsubMessage:
    """What we need of a delivered message, whichever envelope carried it."""

    def __init__(self, event_attributes: Mapping[str, Any], data: Any) -> None:
        message = data.get("message") if isinstance(data, dict) else None
        self.valid_envelope = isinstance(message, dict)
        message = message if isinstance(message, dict) else {}
        self.message_id = str(
            message.get("messageId")
            or message.get("message_id")
            or event_attributes.get("id")
            or ""
        )
        # Checked in idempotency_key(), inside the error mapping: a direct
        # invoker may send anything here.
        self.attributes: Any = message.get("attributes")
        self.publish_time = (
            message.get("publishTime")
            or message.get("publish_time")
            or event_attributes.get("time")
        )
        self.data = message.get("data")

    def age_seconds(self, now: datetime) -> float | None:
        if not self.publish_time:
            return None
        try:
            published = datetime.fromisoformat(str(self.publish_time).replace("Z", "+00:00"))
        except ValueError:
            return None
        if published.tzinfo is None:
            published = published.replace(tzinfo=UTC)
        return (now - published).total_seconds()

    def idempotency_key(self) -> str | None:
        """The ``idempotency_key`` attribute, else the message id; bad shapes are bad messages."""
        attributes = self.attributes
        if attributes is None:
            attributes = {}
        if not isinstance(attributes, Mapping):
            raise InvalidRequestError(
                "message attributes must be an object of strings",
                details=[{"location": "message.attributes", "reason": "expected an object"}],
            )
        key = attributes.get("idempotency_key")
        if key is not None and not isinstance(key, str):
            raise InvalidRequestError(
                "the idempotency_key attribute must be a string",
                details=[
                    {"location": "message.attributes.idempotency_key", "reason": "not a string"}
                ],
            )
        return key or self.message_id or None

    def caller(self, teams_on: bool, admin_team: str | None) -> Caller:
        """The team the message acts for: attribute ``team`` (default ``default``).

        Pub/Sub publishers are trusted by IAM, so the attribute is taken as given;
        a malformed one is a bad message. Without teams every message acts for all.
        """
        attributes = self.attributes if isinstance(self.attributes, Mapping) else {}
        team = attributes.get("team") or DEFAULT_TEAM
        try:
            check_team_name(team)
        except ValueError as error:
            raise InvalidRequestError(
                f"the team attribute: {error}",
                details=[{"location": "message.attributes.team", "reason": str(error)}],
            ) from None
        if not teams_on:
            return EVERYONE
        return Caller.of(team, admin_team)

    def body(self) -> Any:
        if not self.valid_envelope:
            raise InvalidRequestError("event carries no Pub/Sub message")
        if not isinstance(self.data, str) or not self.data:
            raise InvalidRequestError("message has no data")
        try:
            raw = base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequestError("message data is not valid base64") from None
        return decode_json(raw, "message data")


def handle_pubsub(event_attributes: Mapping[str, Any], data: Any) -> dict[str, Any] | None:
    """Submit the job a message asks for; raise only when a redelivery may succeed."""
    message = PubsubMessage(event_attributes, data)
    with logs.context(message_id=message.message_id):
        try:
            max_age = get_services().settings.pubsub_max_event_age_seconds
            age = message.age_seconds(datetime.now(UTC))
            if age is not None and age > max_age:
                logs.log(
                    _logger,
                    40,
                    "dropped a Pub/Sub message older than PUBSUB_MAX_EVENT_AGE_SECONDS",
                    age_seconds=round(age),
                    max_age_seconds=max_age,
                )
                return None
            key = message.idempotency_key()
            services = get_services()
            caller = message.caller(services.teams.teams_on(), services.settings.admin_team)
            with acting_for(caller):
                return submit_body(
                    message.body(), idempotency_key=key, message_id=message.message_id
                )
        except ServiceError as error:
            fields = {"error_type": error.type, "reason": error.message}
            if error.details:
                fields["details"] = error.details  # type: ignore[assignment]
            if error.transient:
                logs.log(_logger, 30, "transient failure; raising so Pub/Sub redelivers", **fields)
                raise
            logs.log(_logger, 40, "permanently rejected Pub/Sub message (acknowledged)", **fields)
            return None
