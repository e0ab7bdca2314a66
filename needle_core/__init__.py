"""Needle core: schema conversion, the call format, constrained decoding and the ONNX engine."""
from needle_core.errors import ModelFileError, NeedleError, ToolCallError, ToolSchemaError
from needle_core.types import NeedleResult, ToolCall

__all__ = ["NeedleError", "ToolSchemaError", "ToolCallError", "ModelFileError", "NeedleResult", "ToolCall", "Needle"]


def __getattr__(name):  # lazy: importing the engine loads onnxruntime
    if name == "Needle":
        from needle_core.api import Needle

        return Needle
    raise AttributeError(name)
