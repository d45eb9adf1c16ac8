"""Data parallelism over a one-axis device mesh: batches sharded on their leading axis, state replicated.

Training steps are plain `jax.jit` functions; their inputs carry the shardings made here, so the same code
runs on one CPU, on fake CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8), on GPUs, and on
several hosts after `maybe_initialize_distributed()`.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed() -> bool:
    """Call `jax.distributed.initialize()` when the environment describes a multi-process run.

    Recognised: JAX_COORDINATOR_ADDRESS (with JAX_NUM_PROCESSES and JAX_PROCESS_ID), or a SLURM / Open MPI
    launch with more than one task (JAX detects those clusters itself). Returns whether it initialised.
    Must run before any other JAX call.
    """
    env = os.environ
    if "JAX_COORDINATOR_ADDRESS" in env:
        missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in env]
        if missing:
            raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not")
        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(env["JAX_NUM_PROCESSES"]),
            process_id=int(env["JAX_PROCESS_ID"]),
        )
        return True
    if int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        jax.distributed.initialize()
        return True
    return False


def data_mesh() -> Mesh:
    """A mesh over every device of every process, with the single axis 'data'.

    The axis is Auto (the compiler propagates shardings), so networks need no sharding annotations.
    """
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of state held whole on every device."""
    return NamedSharding(mesh, P())


def shard_batch(mesh: Mesh, tree: Any) -> Any:
    """Place arrays (B, ...) split along B over the 'data' axis.

    With several processes each passes its own slice of the global batch (B / process_count rows); the
    global batch size must be a multiple of the device count.
    """
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    num_devices = mesh.shape[DATA_AXIS]

    def place(x):
        x = np.asarray(x)
        global_batch = x.shape[0] * jax.process_count() if x.ndim else 0
        if x.ndim == 0 or global_batch % num_devices:
            raise ValueError(
                f"batch size {global_batch} (array shape {x.shape}) must be a multiple of the {num_devices} "
                f"devices of the mesh"
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(place, tree)


def replicate(mesh: Mesh, tree: Any) -> Any:
    """Place every array of `tree` whole on every device of the mesh (the same value on every process)."""
    return jax.device_put(tree, replicated(mesh))
