"""Reading with a trained model: loading it (loading), ONNX export and the ONNX Runtime backend, and the pictures of
inputs and attention maps that the demo, the test phase and TensorBoard show."""
