"""Your own data: JSONL files uploaded or named as ``gs://`` objects, checked line by line.

Holds: ``check`` (the streamed line-by-line check and its exact counts), ``stores``
(a Cloud Storage bucket or a local folder; ``gs://`` reads; the job's read URL),
``service`` (upload, large-file sessions, complete, list, delete, resolve for a job).
A new file format or rule goes in ``check``.

May import: ``core``.
"""
