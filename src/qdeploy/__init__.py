"""qdeploy: export, quantize, run and measure Hugging Face transformers models."""
from .machine import apply_isa_workaround

__version__ = "0.1.0"

# Before torch or OpenVINO run a kernel: cap oneDNN below AMX on machines where AMX is advertised but dies (SIGILL).
apply_isa_workaround()


def load(path, runtime=None, threads=None):
    """A packaged artifact as a predictor: `qdeploy.load("pkg")(["text"])`. See qdeploy.predictor."""
    from .predictor import load as _load

    return _load(path, runtime=runtime, threads=threads)
