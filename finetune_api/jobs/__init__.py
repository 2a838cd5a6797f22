"""Training jobs: submit (idempotent), read, list, stop; the project scope; the template staging.

Holds: ``service`` (the job service), ``scope`` (PROJECT_NAME_PREFIX), ``staging``
(per-request copy of the template + runtime_config.json), ``runtime_config`` (a
job's runtime_config.json read back through Baseten), ``resume`` (a new job
continuing an ended one from a checkpoint), ``estimate`` / ``tokenizer`` /
``chat_template`` (a dry run's counts, the model's tokenizer, and whether its chat
template renders the tools the data holds), ``checkpoint_files`` (one checkpoint's
files as presigned URLs, paged), ``quota`` (a team's TEAM_LIMITS: one search per
check, and the lease two instances take turns on).

May import: ``core``, ``baseten``, ``notify``.
"""
