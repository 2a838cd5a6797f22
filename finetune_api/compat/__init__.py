"""The OpenAI-compatible surface (``/v1/``): OpenAI's shapes mapped onto this service.

Holds: ``jobs`` (fine-tuning jobs: create, list through the job index, retrieve,
cancel, events, checkpoints; the status mapping), ``models`` (``fine_tuned_model``
names, ``/v1/models``, which deployment a model name reaches), ``chat`` (the
chat-completions proxy to a Baseten deployment, streamed through unbuffered),
``results`` (a succeeded job's ``result_files``: OpenAI's results CSV from its log).
Nothing here knows HTTP routing; ``edge/openai_routes.py`` does.

May import: ``core``, ``baseten``, ``notify``, ``files``, ``jobs``, ``insights``,
``serving``, ``polling``.
"""
