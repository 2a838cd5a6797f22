"""What a job is doing: its logs, FT_METRICS series, progress, summaries and the SVG chart.

Holds: ``training_metrics`` (the line format, series, ETA, the evaluation answer,
the results CSV), ``job_insights`` (logs, metrics, evaluation, progress, event
details), ``schemas`` (their answers, for /openapi.json), ``chart`` (the only module
that imports matplotlib).

May import: ``core``, ``baseten``, ``notify``, ``jobs``.
"""
