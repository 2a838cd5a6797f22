"""Talking to Baseten: the REST client, the truss push and deploy adapters, log paging.

Holds: ``client`` (thin REST client for reads, stop, models), ``push`` (truss for
submitting; the only module touching truss_train), ``deploy`` (truss adapter for
serving), ``log_pages`` (exact paging over Baseten's logs). A new Baseten call goes here.

May import: ``core``.
"""
