"""`needle call`: run a model on one request from the shell and print the result as JSON."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("request", help="the user's request (or @file with a JSON list of messages)")
    parser.add_argument("--tools", required=True, help="JSON file: a list of tools in any supported form")
    parser.add_argument("--tool-choice", default="auto", help="auto, required, none, or a tool name")
    parser.add_argument("--model", default=None, help="model folder (default: the bundled model)")


def run(args) -> int:
    from needle_core import Needle, NeedleError

    request = args.request
    if request.startswith("@"):
        request = json.loads(Path(request[1:]).read_text(encoding="utf-8"))
    try:
        tools = json.loads(Path(args.tools).read_text(encoding="utf-8"))
        result = Needle(args.model).call(request, tools, tool_choice=args.tool_choice)
    except (OSError, ValueError, NeedleError) as exc:
        print(f"needle call: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.model_dump(), indent=2, ensure_ascii=False))
    return 0
