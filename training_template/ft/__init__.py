"""The training template's parts; ``train.py`` beside this package is the entry point.

Every module imports only the standard library at module level (torch, transformers,
TRL and datasets are imported inside the functions that need them), so importing any
of them is cheap and a bad config stops the job before the heavy imports.

- ``errors``       TemplateError and the exit status of unusable inputs
- ``config_io``    runtime_config.json: the request, its hyperparameters, its files
- ``data``         the training data: hub dataset or the user's files, fetched and checked
- ``labels``       what carries loss: examples rendered through the chat template
- ``model``        the base model and its tokenizer
- ``methods``      the training methods (``supervised`` → ``sft``, ``dpo`` → ``dpo``) and
                   what each provides
- ``sft``          the supervised trainer (TRL's SFTTrainer on a LoRA adapter)
- ``dpo``          preference tuning (TRL's DPOTrainer on a LoRA adapter, the base
                   model with the adapter off as reference) and its preference pairs
- ``checkpoints``  when checkpoints are saved; finding and checking one to resume
- ``metrics``      the FT_METRICS progress lines
- ``launch``       one process per GPU of every node; the run's step count; logging
- ``run``          one run start to end: prepare, train, write final/
"""
