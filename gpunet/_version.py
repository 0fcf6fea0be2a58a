"""The package version (one place: gpunet.__version__, model files, ONNX producer, gpunet info)."""
__version__ = "0.1.0"
