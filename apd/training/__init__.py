"""Training loops and their pieces: device mesh and sharding, optimiser and EMA, checkpoints, metrics."""
from apd.training.checkpoint import Checkpointer, load_config, save_config
from apd.training.metrics_log import MetricsWriter, read_metrics
from apd.optim import apply_gradients, ema_update, init_train_state, learning_rate_schedule, make_optimizer
from apd.training.prior import dsm_loss, load_prior, prior_exists, train_prior
from apd.training.sharding import data_mesh, maybe_initialize_distributed, replicate, replicated, shard_batch

__all__ = [
    "Checkpointer",
    "MetricsWriter",
    "apply_gradients",
    "data_mesh",
    "dsm_loss",
    "ema_update",
    "init_train_state",
    "learning_rate_schedule",
    "load_config",
    "load_prior",
    "make_optimizer",
    "maybe_initialize_distributed",
    "prior_exists",
    "read_metrics",
    "replicate",
    "replicated",
    "save_config",
    "shard_batch",
    "train_prior",
]
