"""Checkpoints: a thin wrapper over orbax's CheckpointManager, plus the run's config saved as JSON, checked
against the config of every later resume (changes that alter what is trained are refused; safe ones are
appended to config_history.jsonl, and config.json stays the record of the start)."""
from __future__ import annotations

import datetime
import json
import os
import shutil
from typing import Any, Iterable

import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"
# Settings a resumed run may change: they do not alter what is trained (the schedule's length aside).
SAFE_TRAINING_KEYS = ("num_steps", "log_every", "ckpt_every", "keep_checkpoints", "max_bad_steps", "eval_every",
                      "eval_num_measurements", "eval_num_samples", "num_samples", "sample_steps")
DERIVED_KEYS = ("signal_shape",)  # added to the saved config by the run itself


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored; `intact` is the newest earlier step that can (None: none)."""

    def __init__(self, message: str, directory: str, step: int, intact: int | None):
        super().__init__(message)
        self.directory, self.step, self.intact = directory, step, intact


def _first_line(err: Exception, limit: int = 160) -> str:
    """The gist of an orbax / TensorStore error: its first line, before any 'See full TensorStore details'."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0].split(" See full TensorStore")[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


class Checkpointer:
    """Numbered checkpoints of one state pytree in `directory`, keeping the `keep` latest.

    Saving is asynchronous (orbax writes a temporary folder and renames it when complete, so a run killed while
    saving leaves the previous checkpoints as they were); `restore`, `latest_step` and `close` wait for pending
    saves.
    """

    def __init__(self, directory: str, keep: int):
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory = os.path.abspath(directory)
        self._options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=self._options)

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
        try:
            return self._manager.restore(int(step), args=ocp.args.StandardRestore(abstract))
        except Exception as err:  # orbax raises bare Exceptions with pages of TensorStore detail
            reason = _first_line(err)
        intact = self._newest_readable(abstract, below=int(step))
        if intact is None:
            earlier = [s for s in self._manager.all_steps() if s < int(step)]
            why = ("nor can any earlier one: they were written for another model, or all are damaged" if earlier
                   else "and there is no earlier one: it was written for another model, or is damaged")
            raise CheckpointError(f"checkpoint {step} in {self.directory} cannot be restored ({reason}), {why}",
                                  self.directory, int(step), None)
        raise CheckpointError(
            f"checkpoint {step} in {self.directory} is unreadable ({reason}); the newest intact one is step {intact}",
            self.directory, int(step), intact,
        )

    def _newest_readable(self, abstract: Any, below: int) -> int | None:
        for step in sorted((s for s in self._manager.all_steps() if s < below), reverse=True):
            try:
                self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
                return step
            except Exception:
                continue
        return None

    def discard_after(self, step: int) -> list[int]:
        """Move the checkpoints later than `step` (which must exist) to <directory>/../discarded_checkpoints/, so
        that a run resumed from `step` can save those steps again; returns the moved steps."""
        steps = self.all_steps()
        if step not in steps:
            raise ValueError(f"no checkpoint {step} in {self.directory}; saved steps: {steps}")
        later = [s for s in steps if s > step]
        if later:
            self._manager.close()
            if jax.process_index() == 0:
                aside = os.path.join(os.path.dirname(self.directory), "discarded_checkpoints")
                os.makedirs(aside, exist_ok=True)
                stamp = _now().replace(":", "")
                for s in later:
                    shutil.move(os.path.join(self.directory, str(s)), os.path.join(aside, f"{s}_{stamp}"))
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices("apd discard_after")
            self._manager = ocp.CheckpointManager(self.directory, options=self._options)
        return later

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
        try:
            return ml_collections.ConfigDict(json.load(f))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is damaged: not valid JSON ({err})") from None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _flat(tree: dict, prefix: str = "") -> dict:
    """{'a.b.c': value} for a nested dict; lists stay values."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _is_safe(key: str) -> bool:
    parts = key.split(".")
    return len(parts) >= 3 and parts[-2] == "training" and parts[-1] in SAFE_TRAINING_KEYS


def config_changes(flat_saved: dict, flat_new: dict, sections: Iterable[str]) -> tuple[dict, dict]:
    """(unsafe, safe): {key: [saved value, new value]} over the named top-level sections of two flat configs
    ({'a.b': value}); DERIVED_KEYS are ignored. A key on one side only (value None on the other) is a safe
    change: command-line overrides cannot add fields, so it is an option the code or the config file gained (or
    lost) since the run started, whose default keeps the earlier behaviour; it is recorded, not refused."""
    sections = tuple(sections)
    flat_saved = {k: v for k, v in flat_saved.items() if k.split(".")[0] in sections}
    flat_new = {k: v for k, v in flat_new.items() if k.split(".")[0] in sections}
    unsafe, safe = {}, {}
    for key in sorted(set(flat_saved) | set(flat_new)):
        if key.split(".")[-1] in DERIVED_KEYS:
            continue
        old, new = flat_saved.get(key), flat_new.get(key)
        if old != new:
            one_sided = key not in flat_saved or key not in flat_new
            (safe if one_sided or _is_safe(key) else unsafe)[key] = [old, new]
    return unsafe, safe


def _plain(config: ml_collections.ConfigDict) -> dict:
    """The config as JSON would give it back (tuples as lists)."""
    return json.loads(config.to_json_best_effort())


def _current_record(directory: str) -> dict | None:
    """The saved config, flat, with every change of the history applied; None when the run has none."""
    if not os.path.exists(os.path.join(directory, CONFIG_FILE)):
        return None
    record = _flat(_plain(load_config(directory)))
    history = os.path.join(directory, HISTORY_FILE)
    if os.path.exists(history):
        with open(history) as f:
            for line in f:
                if line.strip():
                    record.update({k: new for k, (_, new) in json.loads(line)["changes"].items()})
    return record


def check_resume_config(directory: str, config: ml_collections.ConfigDict, sections: Iterable[str]) -> dict:
    """The safe changes {key: [old, new]} of `config` against the run saved in `directory` (none: {}).

    Raises ValueError naming every differing key when a change alters what was trained (anything in the named
    sections but the SAFE_TRAINING_KEYS of a training section). Touches no file.
    """
    record = _current_record(directory)
    if record is None:
        return {}
    unsafe, safe = config_changes(record, _flat(_plain(config)), sections)
    if unsafe:
        listed = ", ".join(f"{key} {json.dumps(old)} -> {json.dumps(new)}" for key, (old, new) in unsafe.items())
        raise ValueError(
            f"the config differs from the one {directory} was trained with: {listed}; these change what is trained, "
            f"so use another --workdir or the original settings (only {', '.join(SAFE_TRAINING_KEYS)} may change)"
        )
    return safe


def record_config(directory: str, config: ml_collections.ConfigDict, sections: Iterable[str], step: int | None) -> None:
    """Save `config` as directory/config.json when the run is new; else check it (`check_resume_config`) and
    append its safe changes, with the step they start at, to directory/config_history.jsonl."""
    if not os.path.exists(os.path.join(directory, CONFIG_FILE)):
        save_config(directory, config)
        return
    changes = check_resume_config(directory, config, sections)
    if changes:
        entry = {"time": _now(), "step": step, "changes": changes}
        with open(os.path.join(directory, HISTORY_FILE), "a") as f:
            f.write(json.dumps(entry) + "\n")

