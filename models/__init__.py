"""Model zoo: ONNX graphs, training artifacts, TFLite export."""
