"""Getting a trained model out of Python: ONNX export, predict (and, later, bench, plan)."""
