"""Training recipes (torchtune style): each is ``setup / train / save_checkpoint / resume``
driven by a YAML config plus ``--set key=value`` overrides.

- ``pretrain``: MoSE pretraining, MLM + in-context classification at every exit.
- ``finetune``: retrieval fine-tuning, symmetric InfoNCE at every exit (+ optional distillation).
- ``common``: configs, optimiser and schedule, distributed setup, checkpoints, logging.

Run them with ``mose train pretrain|finetune CONFIG`` or under ``torchrun`` with
``python -m mose_training.cli pretrain|finetune CONFIG``.
"""
