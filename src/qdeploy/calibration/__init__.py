"""One calibration source, two faces: an ONNX Runtime CalibrationDataReader and an nncf.Dataset."""
from .source import CalibrationSource

__all__ = ["CalibrationSource"]
