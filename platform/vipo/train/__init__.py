"""Training on Ray Train: one runner, one shared loop, one recipe file per stage.

- ``config``: ``TrainConfig`` (runner knobs) and ``load_train_config`` (picks the recipe's config class);
- ``runner``: ``build_trainer``/``fit`` — ``TorchTrainer`` with ``RunConfig(storage_path=output_dir, name)``;
  relaunching the same config resumes;
- ``loop``: the ``Recipe`` protocol, ``TrainLoop`` (data order, micro-steps, logging, checkpoints, validation,
  export) and ``run_recipe`` (the body of each recipe's Ray Train function);
- ``engine``: plain torch / DDP (gloo on CPU) or DeepSpeed ZeRO behind one interface;
- ``deepspeed``: the DeepSpeed config generated from ``TrainConfig``;
- ``checkpointing``: ``TrainingProgress``, atomic writes, RNG capture, checkpoint lookup;
- ``export``: diffusers-format folders from a run (``vipo export``), incl. ``--compose``;
- ``diffueraser``: DiffuEraser pieces shared by the stage 1-3 recipes;
- ``recipes/``: the registry and one file per stage.
"""
