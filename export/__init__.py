"""Export: ONNX, INT8 quantisation, TensorRT engine builder."""
