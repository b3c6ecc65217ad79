"""qdeploy: export, quantize, run and measure Hugging Face transformers models."""
from .machine import apply_isa_workaround

__version__ = "0.1.0"

# Before torch or OpenVINO run a kernel: cap oneDNN below AMX on machines where AMX is advertised but dies (SIGILL).
apply_isa_workaround()
