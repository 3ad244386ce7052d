"""align: the training side (configs, CLI, Ray + DeepSpeed core, trainers)."""

__version__ = "0.1.0"
