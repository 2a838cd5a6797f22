"""The loopback stand-ins: local replacements for the services the functions talk to.

Used alike by the tests (``tests/``), the benchmarks (``bench/``) and the demo
(``scripts/demo.py``). Everything here binds 127.0.0.1 on a free port and is
stopped by whoever started it. None of it is ever deployed: ``.gcloudignore``
keeps ``loopback/`` out of every upload, and ``finetune_api`` never imports it
(``tests/test_layering.py`` checks both).

* :mod:`loopback.servers`: the Baseten sandbox (``sandbox/``) in this process
  (``start_sandbox``, ``running_sandbox``) or as a ``python -m sandbox`` child
  process (``SandboxProcess``); a moto S3 server (``LocalS3``) for the uploads
  truss makes; ``free_port`` and ``wait_for_http``.
* :mod:`loopback.fake_secret_manager`: a local Secret Manager REST endpoint
  (``FakeSecretManager``) read by the real ``google-cloud-secret-manager``
  client through ``SECRETMANAGER_EMULATOR_HOST``; can inject failures.
* :mod:`loopback.webhook_receiver`: a Standard Webhooks receiver
  (``WebhookReceiver``) that verifies every signature, records what it
  accepted and answers as told.
* :mod:`loopback.hf_hub`: a Hugging Face Hub stand-in (``HfHub``) serving files at
  the ``/{repo}/resolve/{revision}/{file}`` routes ``huggingface_hub`` downloads
  from (``HF_ENDPOINT``), and ``tiny_tokenizer_json``, a real ``tokenizer.json``
  built with the ``tokenizers`` library.
* :mod:`loopback.functions`: the one launcher of a ``main.py`` target under a
  real ``functions-framework`` process (``FunctionServer``).
"""
