"""Training jobs: submit (idempotent), read, list, stop; the project scope; the template staging.

Holds: ``service`` (the job service), ``scope`` (PROJECT_NAME_PREFIX), ``staging``
(per-request copy of the template + runtime_config.json).

May import: ``core``, ``baseten``, ``notify``.
"""
