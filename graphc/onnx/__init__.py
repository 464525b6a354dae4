"""The two directions of ONNX interop (``graphc.onnx_io`` is the public entry): ``export`` (graphc graph to
ONNX model) and ``load`` (ONNX model to graphc nodes). Both import ``onnx`` themselves, when used."""
