"""ONNX -> TFLite export without TensorFlow: float32 and full-integer int8 models.

The exporter lowers an inference ONNX graph to TFLite operators (NHWC), optionally quantizes it
to int8 from calibration samples, and writes the flatbuffer with the `tflite` schema package.
Run the result with :class:`orbitfl.agent.inference.OnboardModel`.
"""

from orbitfl.models.tflite.export import MODES, build_graph, export_tflite
from orbitfl.models.tflite.graph import UnsupportedOpError
from orbitfl.models.tflite.lower import SUPPORTED_OPS

__all__ = ["MODES", "SUPPORTED_OPS", "UnsupportedOpError", "build_graph", "export_tflite"]
