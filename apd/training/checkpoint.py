"""Checkpoints: a thin wrapper over orbax's CheckpointManager, plus the run's config saved as JSON."""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"


class Checkpointer:
    """Numbered checkpoints of one state pytree in `directory`, keeping the `keep` latest.

    Saving is asynchronous; `restore`, `latest_step` and `close` wait for pending saves.
    """

    def __init__(self, directory: str, keep: int):
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any) -> None:
        """Write `state` (a pytree of arrays) as checkpoint `step`."""
        self._manager.save(int(step), args=ocp.args.StandardSave(state))

    def all_steps(self) -> list[int]:
        self._manager.wait_until_finished()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest saved step, or None when there is none."""
        self._manager.wait_until_finished()
        return self._manager.latest_step()

    def restore(self, template: Any, step: int | None = None) -> Any:
        """The state saved at `step` (default: the latest), shaped, typed and sharded like `template`.

        template: a pytree of arrays or jax.ShapeDtypeStruct (a sharding on a struct places the result).
        """
        self._manager.wait_until_finished()
        if step is None:
            step = self._manager.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint to restore in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        return self._manager.restore(int(step), args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def save_config(directory: str, config: ml_collections.ConfigDict) -> str:
    """Write `config` as directory/config.json; returns the path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, CONFIG_FILE)
    with open(path, "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    return path


def load_config(directory: str) -> ml_collections.ConfigDict:
    """The ConfigDict saved by `save_config` in `directory` (tuples come back as lists)."""
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {CONFIG_FILE} in {directory}: was a run ever started there?")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))
