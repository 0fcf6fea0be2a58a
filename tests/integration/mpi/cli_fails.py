"""Run under mpirun by tests/integration/test_distributed.py: ``cli_fails.py RANK ARGS...`` runs ``gpunet ARGS...``
with rank RANK's checkpoint write failing (OSError) at the end of epoch 1, mid-training for the others."""
import sys

import gpunet.distributed as dist
from gpunet import callbacks, cli

who = int(sys.argv[1])
rank, _ = dist.init()
if rank == who:
    def on_epoch_end(self, epoch, logs=None):
        raise OSError(f"disk full on rank {rank}")

    callbacks.ModelCheckpoint.on_epoch_end = on_epoch_end
sys.exit(cli.main(sys.argv[2:]))
