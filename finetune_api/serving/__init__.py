"""Serving what was trained: deployments of checkpoints and the poll's serving watch.

Holds: ``deployments`` (deploy idempotently by name, get, deactivate), ``watch``
(deploy on completion, deployment events).

May import: ``core``, ``baseten``, ``notify``, ``jobs``, ``insights``.
"""
