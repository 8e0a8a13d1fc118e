"""LeRobot importer: builds ONNX model packages from LeRobot checkpoints (runs only in .venv-lerobot)."""
