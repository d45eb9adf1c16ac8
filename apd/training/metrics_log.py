"""Scalar metrics written twice: one JSON object per line in metrics.jsonl, and TensorBoard event files."""
from __future__ import annotations

import json
import os
from typing import Mapping

from tensorboardX import SummaryWriter

METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
    """Appends {"step": step, name: value, ...} lines to logdir/metrics.jsonl; TensorBoard events in logdir."""

    def __init__(self, logdir: str, resume_step: int | None = None):
        """resume_step: lines of later steps (written before a run was killed) are dropped, as they are redone."""
        os.makedirs(logdir, exist_ok=True)
        self.path = os.path.join(logdir, METRICS_FILE)
        if resume_step is not None and os.path.exists(self.path):
            kept = [m for m in read_metrics(logdir) if m["step"] <= resume_step]
            with open(self.path, "w") as f:
                f.writelines(json.dumps(m) + "\n" for m in kept)
        self._file = open(self.path, "a")
        self._tb = SummaryWriter(logdir)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        """Record scalars (python or 0-d array values) at `step`."""
        values = {name: float(value) for name, value in scalars.items()}
        if "step" in values:
            raise ValueError("'step' is reserved for the step number; rename the metric")
        self._file.write(json.dumps({"step": int(step), **values}) + "\n")
        self._file.flush()
        for name, value in values.items():
            self._tb.add_scalar(name, value, int(step))
        self._tb.flush()

    def close(self) -> None:
        self._file.close()
        self._tb.close()


def read_metrics(logdir: str) -> list[dict]:
    """Every line of logdir/metrics.jsonl, parsed, in order."""
    with open(os.path.join(logdir, METRICS_FILE)) as f:
        return [json.loads(line) for line in f if line.strip()]
