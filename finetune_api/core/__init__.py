"""The small core every room stands on: settings, errors, logs, secrets, schemas, parsing.

Holds: ``settings`` (every setting, typed, read once), ``errors`` (one exception per
CONTRACT error type), ``logs`` (the JSON log format and redaction), ``secrets`` /
``secret_values`` (Secret Manager, API_KEYS), ``schemas`` (request/response models,
Baseten -> Job), ``timestamps`` (the one time parser), ``decoding`` (untrusted JSON
bytes), ``query`` (strict query-string numbers), ``cloud_storage`` (the storage
client), ``buckets`` (small objects in a bucket or folder, written with preconditions)
and ``teams`` (team:key entries, the Caller, TEAM_LIMITS).

May import: nothing else of ``finetune_api`` (the bottom layer).
"""
