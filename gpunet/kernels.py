"""``gpunet.kernels.fast_path_status()``, the documented path to the CUDA fast paths' status (the kernels
themselves are in :mod:`gpunet.ops.cuda`)."""
from gpunet.ops import fast_path_status

__all__ = ["fast_path_status"]
