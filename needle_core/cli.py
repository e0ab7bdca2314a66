"""The ``needle`` command. Each subcommand lives in the module that owns its concept.

Subcommand modules are imported lazily, so ``needle --help`` and the inference commands work on
the plain (torch-free) install. Each module provides ``add_arguments(parser)`` and ``run(args)``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "call": ("needle_core.cli_call", "run the bundled model on one request and print the calls"),
    "bench": ("needle_core.bench", "measure latency, throughput, size and memory of the engine"),
    "data": ("training.data_cli", "inspect training data (needle data stats FILE...)"),
    "import": ("training.importers", "convert the recorded teacher sets in ../shared/data to JSONL"),
    "distill": ("training.teachers", "label or synthesize examples with a LangChain teacher model"),
    "train": ("training.train", "train a student model from a config file"),
    "finetune": ("training.finetune", "continue training the bundled model on your own JSONL"),
    "eval": ("training.evaluate", "evaluate a model (needle eval bfcl, needle eval heldout)"),
    "export": ("training.export", "export a checkpoint to quantized ONNX for the engine"),
    "calibrate": ("training.calibrate", "fit the confidence calibration of a model folder"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="needle", description="Needle: tiny local tool-calling model.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        # Arguments are added on demand (see main) so that --help stays torch-free.
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.print_help() if not argv or argv[0] in ("-h", "--help") else parser.parse_args(argv)
        return 0
    name = argv[0]
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # e.g. torch missing for training commands
        print(f"needle {name}: needs an optional dependency that is not installed ({exc}). "
              f"Install the extra, e.g. pip install 'needle[train]'.", file=sys.stderr)
        return 2
    sub_parser = argparse.ArgumentParser(prog=f"needle {name}", description=help_text)
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
