"""Joining the other processes of a multi-host run (`jax.distributed`), for every entry point that may run on
several hosts: `rsclip_jax.train` and `rsclip_jax.evaluate`.

Several processes: --coordinator_address=host:port --num_processes=N --process_id=I on each, or nothing on a
Cloud TPU pod and under SLURM, where JAX finds the cluster itself. The flags are defined here, once, so that
both entry points can be imported into one process.
"""

import os

import jax
from absl import flags

_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")


def initialize_distributed() -> None:
    """Joins this process to the others of its run, if it has any; call before JAX touches a device."""
    if _COORDINATOR.value:
        # Cross-process collectives between CPU devices; GPU and TPU devices ignore this setting.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        # JAX binds one GPU per SLURM task; a single task per node drives all of its node's GPUs instead.
        gpus = os.environ.get("SLURM_GPUS_ON_NODE", "")
        one_per_node = os.environ.get("SLURM_NTASKS_PER_NODE") == "1" and gpus.isdigit()
        jax.distributed.initialize(local_device_ids=list(range(int(gpus))) if one_per_node else None)
    elif "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        jax.distributed.initialize()
