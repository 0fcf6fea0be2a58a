"""CUDA graph plumbing with no model or trainer knowledge: the capture stream, the capture itself, and the
C-API GEMM a capture issues its matrix products through."""
from __future__ import annotations

import gc

from gpunet import backend as _backend
import gpunet.ops.cuda.cublas as cublas


def make_gemm(backend):
    """A :class:`gpunet.ops.cuda.cublas.Gemm` on ``backend``'s device, in the effective TF32 mode of CuPy's float32
    GEMMs (so captured and eager steps round alike)."""
    with backend.device:
        return cublas.Gemm(backend.xp, tf32=_backend.tf32_effective())


def new_stream(xp):
    """A non-blocking stream for graph capture and replay that first waits for the work already queued on
    the current stream: the data uploads of ``fit`` (``cupy.asarray`` copies asynchronously, and a
    non-blocking stream does not synchronise with the legacy default stream). CuPy API:
    ``cupy/cuda/stream.pyx`` (``Event.record(stream=None)`` records on the current stream,
    ``Stream.wait_event``)."""
    stream = xp.cuda.Stream(non_blocking=True)
    uploaded = xp.cuda.Event(disable_timing=True)
    uploaded.record()
    stream.wait_event(uploaded)
    return stream


def capture_graph(stream, body):
    """Record ``body()`` on ``stream`` as a CUDA graph; temporaries come from a private memory pool that
    is returned with the graph and must live as long as it (cupy#9655). ``begin_capture`` uses
    ``cudaStreamCaptureModeRelaxed`` (``cupy/cuda/stream.pyx``), so that pool may call cudaMalloc."""
    import cupy  # noqa: PLC0415  (optional extra: only CUDA backends get here)

    pool = cupy.cuda.MemoryPool()
    # a garbage-collector pass inside the capture could free an unreachable earlier graph's cuBLAS handle or
    # memory (cublasDestroy synchronises the device, cudaFree too), which invalidates this capture: collect
    # now, and keep the collector paused while capturing (torch.cuda.graph does the same)
    gc.collect()
    paused = gc.isenabled()
    gc.disable()
    try:
        with cupy.cuda.using_allocator(pool.malloc):
            stream.begin_capture()
            try:
                body()
            except BaseException:  # end the capture, but report what broke it (not the invalidated capture)
                try:
                    stream.end_capture()
                except Exception:  # noqa: S110  (cudaErrorStreamCaptureInvalidated follows the real error)
                    pass
                raise
            graph = stream.end_capture()
    finally:
        if paused:
            gc.enable()
    return graph, pool
