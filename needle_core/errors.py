"""Errors that Needle raises: each names the tool and the field at fault."""


class NeedleError(Exception):
    """Base class of every error Needle raises on purpose."""


class ToolSchemaError(NeedleError, ValueError):
    """A tool description could not be turned into a canonical spec.

    The message always names the tool (or its position in the list) and the JSON path at fault,
    e.g. ``tool 'get_weather': parameters.properties.unit.type: unknown type 'colour'``.
    """

    def __init__(self, tool: str, path: str, problem: str):
        self.tool, self.path, self.problem = tool, path, problem
        where = f"{path}: " if path else ""
        super().__init__(f"tool {tool!r}: {where}{problem}")


class ToolCallError(NeedleError, ValueError):
    """A call does not fit the declared tools (unknown tool, missing or ill-typed argument)."""

    def __init__(self, tool: str, path: str, problem: str):
        self.tool, self.path, self.problem = tool, path, problem
        where = f"{path}: " if path else ""
        super().__init__(f"call to {tool!r}: {where}{problem}")


class ModelFileError(NeedleError):
    """A model directory is missing, incomplete, or fails its hash check."""
