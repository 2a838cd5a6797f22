"""The HTTP and Pub/Sub edge: routing, body rules, auth, error mapping, the OpenAPI document.

Holds: ``http_app`` (werkzeug routing, body rules, error mapping), ``routes`` (the
handlers), ``openapi`` (the document; ``openapi_evaluation`` its evaluation and
checkpoint-file paths, ``openapi_v1`` its ``/v1/`` part), ``auth`` (API keys), ``pubsub`` (message
decoding, ack-vs-retry). A new route goes in ``routes`` (and ``openapi``).

May import: everything below it, including the root modules ``api`` and ``runtime``.
Nothing imports the edge but ``main.py``.
"""
