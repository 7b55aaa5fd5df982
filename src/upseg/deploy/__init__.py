"""Getting a trained model out of Python: ONNX export (and, later, bench, predict, plan)."""
