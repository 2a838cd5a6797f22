"""The scheduled poll: what changed since last time, and the state it keeps between polls.

Holds: ``poller`` (one poll), ``ledger`` (its bookkeeping), ``state`` (the state's
format and the local-file store), ``gcs_store`` (the state in Cloud Storage),
``stores`` (which store the settings choose), ``retry`` (resuming failed jobs
that asked for it).

May import: ``core``, ``baseten``, ``notify``, ``jobs``, ``insights``, ``serving``.
"""
