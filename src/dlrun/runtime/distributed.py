"""Data-parallel training over several devices, and over several processes (the `dist` node).

One process, several devices (GPUs, or CPU devices forced with
`XLA_FLAGS=--xla_force_host_platform_device_count=N`): the training step runs on a
`jax.sharding.Mesh` of all devices with one axis, `data`. Each step's row indices and example
weights are split along `data` (every device gathers and trains its share of the batch), while
the device-resident dataset, the parameters and the optimizer state are replicated; XLA's SPMD
partitioner inserts the all-reduce of the loss sums and gradients. Only the training step is
sharded: between epochs the state is a plain single-device array again (`local`), so evaluation,
checkpoints and everything else in dlrun.train are unchanged.

Several processes (`dist.enabled=true`, e.g. one per GPU or per node under SLURM):
`jax.distributed.initialize` joins them before anything touches JAX's backend, and the mesh then
spans every process's devices. Each process loads the same data and computes the same shuffled
order from the same keys, and puts only its own devices' share of each batch on the mesh
(`jax.make_array_from_callback`, which asks for the shards of this process's devices only).
Process 0 alone writes the run directory and the checkpoints; it tells the others how the run
starts (`exchange`, `broadcast`): fresh, resumed from its checkpoint (whose arrays it reads and
broadcasts), already finished, or failed with an error, which the others then raise too. Stop
requests (SIGTERM) and checkpoint pauses are agreed by all processes (`agreed`), so every
process runs the same sequence of steps and collectives.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from dlrun.errors import ConfigError, DlrunError, FileError
from dlrun.config.registry import require, setattrs

AXIS = "data"  # the mesh axis the batch is split along


@dataclass(frozen=True)
class DistConfig:
    """The `dist` node of the config (see conf/config.yaml)."""

    data_parallel: str = "auto"  # auto | true | false
    enabled: bool = False  # multi-process: jax.distributed.initialize()
    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None

    def __post_init__(self):
        mode, n, i = str(self.data_parallel).lower(), self.num_processes, self.process_id
        require(mode in ("auto", "true", "false"),
                f"data_parallel must be auto, true or false (got '{self.data_parallel}')")
        require(n is None or n >= 1, f"num_processes must be >= 1 or null (got {n})")
        require(i is None or (i >= 0 and (n is None or i < n)),
                f"process_id must be in [0, num_processes) or null (got {i})")
        require(self.enabled or (self.coordinator_address is None and n is None and i is None),
                "coordinator_address, num_processes and process_id are for multi-process runs: "
                "add dist.enabled=true")
        require(not (self.enabled and mode == "false"),
                "dist.enabled=true trains one model over all processes' devices: it needs "
                "dist.data_parallel=auto or true")
        setattrs(self, data_parallel=mode, enabled=bool(self.enabled))


def parse(node: Any) -> DistConfig:
    """The validated `dist` node (absent: single process, data parallel when there are devices)."""
    from omegaconf import OmegaConf

    from dlrun.config.registry import build_node
    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})
    return build_node("dist", DistConfig, plain)


def initialize(dc: DistConfig) -> None:
    """Join the processes of a multi-process run (dist.enabled=true), once per process. Must
    come before anything touches JAX's backend (device lists, arrays); jax.distributed finds
    SLURM's (and other clusters') settings itself where coordinator_address etc. are null."""
    import jax
    if not dc.enabled or jax.distributed.is_initialized():
        return
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized():
        raise ConfigError("dist.enabled=true must be set up before JAX starts its backend; call "
                          "dlrun.train.train_and_evaluate (or dlrun.runtime.distributed.initialize) first")
    # Collectives between CPU processes (tests, CPU clusters); GPUs use NCCL regardless.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(dc.coordinator_address, dc.num_processes, dc.process_id,
                                   initialization_timeout=int(os.environ.get(
                                       "DLRUN_DIST_TIMEOUT", "300")))
    except (ValueError, RuntimeError) as exc:  # no cluster found, coordinator unreachable
        text = " ".join(str(exc).split())[:300]
        raise ConfigError(f"dist.enabled=true: cannot join the processes ({text}); give "
                          f"dist.coordinator_address=HOST:PORT dist.num_processes=N "
                          f"dist.process_id=I on each process, or run under SLURM") from None
    # jax.distributed's preemption notifier takes SIGTERM over (measured: a SIGTERM to process
    # 0 was swallowed and the run went on): hand it back to the Python-level handler that was
    # there (dlrun.runtime.signals'), whose stop request the processes then agree on (`agreed`).
    import signal
    import threading
    if threading.current_thread() is threading.main_thread():
        handler = signal.getsignal(signal.SIGTERM)
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)


def is_primary() -> bool:
    """Whether this process writes the run (process 0, or the only one). Never starts JAX."""
    import jax
    return not jax.distributed.is_initialized() or jax.process_index() == 0


def processes() -> int:
    import jax
    return jax.process_count() if jax.distributed.is_initialized() else 1


def make_mesh(dc: DistConfig, batch_size: int, what: str = "train.batch_size"):
    """The data-parallel mesh over every device of every process, or None (one device, or
    dist.data_parallel=false). ConfigError unless the batch divides evenly among the devices."""
    import jax
    devices = jax.devices()
    if dc.data_parallel == "false" or (dc.data_parallel == "auto" and len(devices) == 1):
        return None
    n, p = len(devices), processes()
    over = f"{n} devices" + (f" ({p} processes x {n // p})" if p > 1 else "")
    if batch_size % n:
        lower, upper = batch_size - batch_size % n, batch_size + n - batch_size % n
        options = f"train.batch_size={upper}" + (f" or {lower}" if lower else "")
        raise ConfigError(f"{what} ({batch_size}) is not divisible by the {over} it is split "
                          f"over (data parallel); use a multiple of {n}, e.g. {options}"
                          + ("" if p > 1 else ", or dist.data_parallel=false for one device"))
    return jax.sharding.Mesh(np.asarray(devices), (AXIS,))


def describe(mesh) -> str:
    """' | data parallel over N devices (P processes)' for the run's first log line."""
    if mesh is None:
        return ""
    p = processes()
    return f" | data parallel over {mesh.size} devices" + (f" ({p} processes)" if p > 1 else "")


# ---- placing arrays on the mesh, and back ---------------------------------------------------
def _put(a, sharding):
    """`a` (a local or global array, or numpy) as a global array with `sharding`; each process
    supplies only the shards of its own devices."""
    import jax
    if isinstance(a, jax.Array) and a.sharding == sharding:
        return a
    if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_put(jax.random.key_data(a), sharding),
                                        impl=jax.random.key_impl(a))
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(mesh, tree):
    """Every leaf of `tree` whole on every device of the mesh (the data, parameters, keys)."""
    import jax
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.tree.map(lambda a: _put(a, sharding), tree)


def batch_sharding(mesh, ndim: int):
    """Arrays whose last axis is the batch, (steps, [copies,] B): B split along `data`."""
    import jax
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*[None] * (ndim - 1), AXIS))


def shard_batch(mesh, tree):
    """Each leaf (steps, [copies,] B) split along its last axis over the mesh's devices."""
    import jax
    return jax.tree.map(lambda a: _put(a, batch_sharding(mesh, np.ndim(a))), tree)


def local(tree):
    """A replicated global array as the plain single-device array of this process's first
    device (no copy); anything else unchanged."""
    import jax

    def one(a):
        if isinstance(a, jax.Array) and len(a.sharding.device_set) > 1:
            return a.addressable_data(0)
        return a
    return jax.tree.map(one, tree)


# ---- agreement between processes ------------------------------------------------------------
def agreed(flag: bool) -> bool:
    """True on every process if `flag` is true on any (a stop request, a checkpoint pause): the
    processes then leave the step loop at the same step. One process: `flag` itself."""
    if processes() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils
    return bool(np.asarray(multihost_utils.process_allgather(np.asarray(bool(flag)))).any())


def broadcast(tree):
    """Process 0's arrays (every process passes a tree of the same shapes) on every process."""
    if processes() == 1:
        return tree
    from jax.experimental import multihost_utils
    return multihost_utils.broadcast_one_to_all(tree)


_told = [True]  # whether process 0 has told the others how the current run starts


def expect_exchange() -> None:
    """A run starts: process 0 owes the others one `exchange` (or `abort`)."""
    _told[0] = processes() == 1


def exchange(message: Optional[dict]) -> dict:
    """Process 0's `message` (a JSON-able dict) on every process; the others pass None. A
    message {'error': ..., 'kind': ...} (see `abort`) is raised on the others as that error."""
    from jax.experimental import multihost_utils
    _told[0] = True
    data = np.frombuffer(json.dumps(message).encode(), np.uint8) if is_primary() else None
    size = int(multihost_utils.broadcast_one_to_all(np.int32(0 if data is None else data.size)))
    buffer = data if data is not None else np.zeros(size, np.uint8)
    received = json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer))).decode())
    if "error" in received and not is_primary():
        kind = {"ConfigError": ConfigError, "FileError": FileError}.get(received["kind"], DlrunError)
        raise kind(received["error"])
    return received


def abort(exc: BaseException) -> None:
    """Process 0 failed before telling the others how the run starts: tell them, so that they
    stop with the same error instead of waiting for it."""
    if not _told[0] and is_primary() and processes() > 1:
        exchange({"error": str(exc), "kind": type(exc).__name__})
