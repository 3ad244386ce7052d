"""`align tiny build`: the bundled tiny task (data, tokenizer, base model), made locally."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("tiny", help="Build the bundled tiny tasks (movie reviews, arithmetic, tool use: data, tokenizer, base model)",
                                   description="The bundled tiny task used by the demo and the tests.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for task, name, help_text, default in (
            ("reviews", "build", "build (or reuse) the tiny task", "tiny"),
            ("reasoning", "reasoning", "build (or reuse) the tiny reasoning task (arithmetic with exact answers)",
             "tiny-reasoning"),
            ("tools", "tools", "build (or reuse) the tiny tool-use task (products a calculator tool answers)",
             "tiny-tools")):
        build = actions.add_parser(name, help=help_text)
        build.add_argument("--out", help=f"output directory (default $ALIGN_HOME/{default})")
        build.add_argument("--force", action="store_true", help="rebuild even if a matching build exists")
        build.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")
        build.add_argument("overrides", nargs="*", metavar="key=value", help="settings, e.g. steps=300 (see --print-config)")
        build.set_defaults(func=run_build, task=task)
    prefs = actions.add_parser("prefs", help="sample, judge and rank preference data from the tiny base model")
    prefs.add_argument("--force", action="store_true", help="rebuild even if matching data exists")
    prefs.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")
    prefs.add_argument("overrides", nargs="*", metavar="key=value", help="settings, e.g. candidates=4 noise=0.1")
    prefs.set_defaults(func=run_prefs)


def run_build(args: argparse.Namespace) -> int:
    from alignment.config import dump_config, load_config
    from alignment.tiny.build import TinyBuildConfig, TinyReasoningConfig, TinyToolsConfig, build_tiny

    overrides = list(args.overrides) + ([f"out={args.out}"] if args.out else [])
    task_config = {"reviews": TinyBuildConfig, "reasoning": TinyReasoningConfig, "tools": TinyToolsConfig}[args.task]
    config = load_config(task_config, None, overrides)
    if args.print_config:
        print(dump_config(config), end="")
        return 0
    build_tiny(config, force=args.force)
    return 0


def run_prefs(args: argparse.Namespace) -> int:
    from alignment.config import dump_config, load_config
    from alignment.tiny.prefs import TinyPrefsConfig, build_prefs

    config = load_config(TinyPrefsConfig, None, args.overrides)
    if args.print_config:
        print(dump_config(config), end="")
        return 0
    build_prefs(config, force=args.force)
    return 0
