"""Multi-process (multi-host) start-up: `jax.distributed.initialize`, called by the main
job before anything touches a device, never at import time.

    config.distributed.coordinator_address = "10.0.0.1:1234"   # every process the same
    config.distributed.num_processes = 2
    config.distributed.process_id = 0                          # 0 .. num_processes - 1
or
    config.distributed.auto = True   # Cloud TPU pod slices, SLURM, Open MPI, Kubernetes:
                                     # jax finds the coordinator and the ids itself

Then every process runs the same program over one global mesh of all devices; each
reads only its rows of each global batch, orbax writes one checkpoint together, and
only process 0 writes logs, results and plots. On CPU the processes talk through gloo.
"""

from __future__ import annotations

import ml_collections


def initialize(config: ml_collections.ConfigDict) -> bool:
    """Joins the processes named by `config.distributed`; False when it names none."""
    import jax

    settings = config.distributed
    if not settings.coordinator_address and not settings.auto:
        return False
    if settings.coordinator_address:
        if not 0 <= settings.process_id < settings.num_processes:
            raise ValueError(f"config.distributed.process_id={settings.process_id} must be in "
                             f"[0, config.distributed.num_processes={settings.num_processes})")
        arguments = dict(coordinator_address=settings.coordinator_address, num_processes=settings.num_processes,
                         process_id=settings.process_id)
    else:
        arguments = {}
    # Collectives between the processes' CPU devices (the TPU and GPU clients ignore it).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**arguments)
    return True
