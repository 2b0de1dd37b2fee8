"""Export: verified ONNX (checker, ONNX Runtime parity, MACs from the graph) and TensorRT engines.

Nothing here imports onnx, onnxruntime or tensorrt until it is used.
"""

from lappdeploy.export.onnx_export import OnnxExport, check_onnx, deploy_copy, to_onnx
from lappdeploy.export.onnx_macs import OnnxCost, count_onnx_macs
from lappdeploy.export.run import export_run

__all__ = ["OnnxCost", "OnnxExport", "check_onnx", "count_onnx_macs", "deploy_copy", "export_run", "to_onnx"]
