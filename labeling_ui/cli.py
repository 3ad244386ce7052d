"""`align label ...`: serve the labeling app, manage users, import items, export pairs, the arena leaderboard."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from alignment.errors import AlignError

if TYPE_CHECKING:
    from labeling_ui.store import Store

ARENA_HELP = "also make arena battles: every two candidates of an item from different models"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "label",
        help="Labeling app: serve, users, import, generate, export, leaderboard",
        description="Human ranking of candidate responses.",
    )
    parser.set_defaults(func=lambda _args: parser.print_help() or 2)
    commands = parser.add_subparsers(dest="label_command", metavar="COMMAND")

    def with_db(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument(
            "--db",
            default=os.environ.get("ALIGN_LABEL_DB"),
            help="SQLAlchemy URL: sqlite:///path.db or postgresql://... "
            "(default: $ALIGN_LABEL_DB, else sqlite under $ALIGN_HOME)",
        )
        return sub

    serve = with_db(commands.add_parser("serve", help="run the web app (login required)"))
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument(
        "--claim-timeout-minutes",
        type=float,
        default=60,
        help="an item left open this long goes back to the pool",
    )
    serve.add_argument("--session-ttl-minutes", type=float, default=720,
                       help="a login (API token or page session) lasts this long (default 12 h)")
    serve.add_argument("--lock-after", type=int, default=5,
                       help="failed logins in a row that lock an account (default 5)")
    serve.add_argument("--lock-after-per-address", type=int, default=20,
                       help="failed logins from one client address that lock it (default 20)")
    serve.add_argument("--lock-minutes", type=float, default=5,
                       help="the first lock; each further one doubles, up to --max-lock-minutes (default 5)")
    serve.add_argument("--max-lock-minutes", type=float, default=60, help="the longest lock (default 60)")
    serve.set_defaults(func=_serve)

    users = commands.add_parser("users", help="manage accounts")
    users.set_defaults(func=lambda _args: users.print_help() or 2)
    user_commands = users.add_subparsers(dest="users_command", metavar="COMMAND")
    add = with_db(user_commands.add_parser("add", help="add an account (asks for the password)"))
    add.add_argument("name")
    add.add_argument("--role", choices=["annotator", "admin"], default="annotator")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin (scripts)")
    add.set_defaults(func=_users_add)
    listing = with_db(user_commands.add_parser("list", help="list accounts"))
    listing.set_defaults(func=_users_list)
    unlock = with_db(user_commands.add_parser(
        "unlock", help="lift a login lock and forget the failed logins of an account or client address"))
    unlock.add_argument("name", nargs="?", help="the account")
    unlock.add_argument("--address", help="a client address (IP) locked after failed logins")
    unlock.set_defaults(func=_users_unlock)
    locks = with_db(user_commands.add_parser("locks", help="accounts and addresses with failed logins or a lock"))
    locks.set_defaults(func=_users_locks)

    importer = with_db(commands.add_parser("import", help="import prompts with candidates from JSONL"))
    importer.add_argument("project")
    importer.add_argument(
        "file", help='JSONL: {"id": ..., "prompt": ..., "candidates": ["...", {"text": ..., "model": ...}, '
        '{"messages": [{"role": ..., "content": ...}, ...], "model": ...}]} (the last: a trajectory)'
    )
    importer.add_argument(
        "--annotations-per-item",
        "-m",
        type=int,
        default=None,
        help="M distinct annotators per item (new projects: 3)",
    )
    importer.add_argument("--guidelines", type=Path, help="Markdown file shown to annotators")
    importer.add_argument("--arena", action="store_true", help=ARENA_HELP)
    importer.add_argument("--render", choices=["text", "markdown"], default=None,
                          help="how prompts and candidates are shown: text, exactly as written (new projects), "
                          "or Markdown with raw HTML shown as text")
    importer.add_argument("--feedback", choices=["ranking", "rating"], default=None,
                          help="ranking: annotators rank all candidates (new projects); rating: they rate each one")
    importer.add_argument("--rating-scale", type=int, choices=[2, 5], default=None,
                          help="rating projects: 2 (thumbs: 0 down, 1 up) or 5 (1 to 5, the default)")
    importer.add_argument("--rating-threshold", type=int, default=None,
                          help="rating projects: a rating at or above it is desirable in the KTO export (default 4)")
    importer.set_defaults(func=_import)

    generate = with_db(commands.add_parser(
        "generate", help="sample candidates from checkpoints with the rollout engine and import them"))
    generate.add_argument("project")
    generate.add_argument("--prompts", required=True, help="JSONL with a `prompt` per line (text or chat messages)")
    generate.add_argument("--checkpoints", nargs="+", required=True, help="local HF model directories")
    generate.add_argument("--samples", type=int, default=1, help="responses per prompt from each checkpoint")
    generate.add_argument("--max-prompts", type=int, default=None, help="use only the first N prompts")
    generate.add_argument("--max-tokens", type=int, default=64)
    generate.add_argument("--temperature", type=float, default=1.0)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--backend", choices=["vllm", "hf"], default="vllm", help="rollout backend")
    generate.add_argument("--chat-template", default=None,
                          help="chat template for chat prompts: a built-in (chatml) or a Jinja file; default: the tokenizer's")
    generate.add_argument("--annotations-per-item", "-m", type=int, default=None,
                          help="M distinct annotators per item (new projects: 3)")
    generate.add_argument("--guidelines", type=Path, help="Markdown file shown to annotators")
    generate.add_argument("--arena", action="store_true", help=ARENA_HELP)
    generate.set_defaults(func=_generate)

    export = with_db(commands.add_parser(
        "export", help="export rankings as TRL preference pairs, or ratings as TRL's unpaired KTO rows"))
    export.add_argument("project", nargs="?", help="the project (or --project)")
    export.add_argument("--project", dest="project_option", metavar="PROJECT", help="the project")
    export.add_argument("--out", "-o", required=True, help="output file, .jsonl or .parquet")
    export.add_argument(
        "--mode",
        choices=["all", "consensus"],
        default="all",
        help="all: every ordered pair of every ranking; consensus: pairs of the mean-rank consensus",
    )
    export.add_argument(
        "--format",
        choices=["pairs", "kto", "sft", "jsonl", "parquet"],
        help="pairs: preference pairs (prompt/chosen/rejected, the default; corrections over the answers they "
        "correct included); kto: rating projects as prompt/completion/label rows; sft: the annotators' corrections "
        "and own answers as prompt/completion rows; jsonl or parquet: pairs in that file type (default: from the suffix)",
    )
    export.set_defaults(func=_export)

    board = with_db(commands.add_parser("leaderboard", help="arena leaderboard: Elo and Bradley-Terry ratings"))
    board.add_argument("project")
    board.add_argument("--json", action="store_true", help="print JSON instead of a table")
    board.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    board.add_argument("--seed", type=int, default=0, help="bootstrap seed (same seed, same intervals)")
    board.set_defaults(func=_leaderboard)


def _store(args: argparse.Namespace) -> Store:
    from labeling_ui.store import Store

    return Store(args.db)


def _serve(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from pydantic import ValidationError

    from labeling_ui.app import serve
    from labeling_ui.store import SecuritySettings

    try:
        security = SecuritySettings(
            session_ttl=timedelta(minutes=args.session_ttl_minutes),
            lock_after=args.lock_after,
            lock_after_per_address=args.lock_after_per_address,
            lock_time=timedelta(minutes=args.lock_minutes),
            max_lock_time=timedelta(minutes=args.max_lock_minutes),
        )
    except ValidationError as error:
        raise AlignError(f"serve: {error.errors()[0]['loc'][0]}: {error.errors()[0]['msg']}") from error
    serve(args.db, args.host, args.port, args.claim_timeout_minutes, security)
    return 0


def _users_add(args: argparse.Namespace) -> int:
    from labeling_ui.store import add_user

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise AlignError("the passwords differ")
    add_user(_store(args), args.name, password, args.role)
    print(f"added {args.role} {args.name}")
    return 0


def _users_list(args: argparse.Namespace) -> int:
    from labeling_ui.store import list_users

    for user in list_users(_store(args)):
        print(f"{user['name']}\t{user['role']}\t{user['created_at']}")
    return 0


def _users_unlock(args: argparse.Namespace) -> int:
    from labeling_ui.store import unlock, unlock_message

    print(unlock_message(args.name, args.address, unlock(_store(args), args.name, args.address)))
    return 0


def _users_locks(args: argparse.Namespace) -> int:
    from labeling_ui.store import login_throttles

    for row in login_throttles(_store(args)):
        until = f"locked until {row['locked_until']} UTC" if row["locked_until"] else "not locked"
        print(f"{row['scope']}\t{row['key']}\t{row['failures']} failures\t{row['locks']} locks\t{until}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from labeling_ui.store import import_items, read_jsonl

    guidelines = None
    if args.guidelines is not None:
        if not args.guidelines.is_file():
            raise AlignError(f"no such guidelines file: {args.guidelines}")
        guidelines = args.guidelines.read_text(encoding="utf-8")
    store = _store(args)
    counts = import_items(
        store,
        args.project,
        read_jsonl(args.file),
        source=args.file,
        annotations_per_item=args.annotations_per_item,
        guidelines=guidelines,
        render=args.render,
        feedback=args.feedback,
        rating_scale=args.rating_scale,
        rating_threshold=args.rating_threshold,
    )
    print(f"{args.project}: added {counts['added']} items, skipped {counts['skipped']} already present")
    _make_battles(args, store)
    return 0


def _make_battles(args: argparse.Namespace, store: Store) -> None:
    if args.arena:
        from labeling_ui.arena import create_battles

        print(f"{args.project}: added {create_battles(store, args.project)} arena battles")


def _generate(args: argparse.Namespace) -> int:
    from labeling_ui.generate import generate_candidates
    from labeling_ui.store import import_items

    names = [Path(checkpoint).name for checkpoint in args.checkpoints]
    if args.arena and len(set(names)) < len(names):
        raise AlignError(f"--arena tells models apart by directory name, and these repeat: {names}; "
                         "link or copy the checkpoints to distinct names (e.g. base, dpo)")
    records = generate_candidates(args.prompts, args.checkpoints, args.samples, args.max_prompts, args.max_tokens,
                                  args.temperature, args.seed, args.backend, chat_template=args.chat_template)
    guidelines = args.guidelines.read_text(encoding="utf-8") if args.guidelines else None
    store = _store(args)
    counts = import_items(store, args.project, records, annotations_per_item=args.annotations_per_item,
                          guidelines=guidelines, by="generate")
    print(f"{args.project}: added {counts['added']} generated items, skipped {counts['skipped']} already present")
    _make_battles(args, store)
    return 0


def _export(args: argparse.Namespace) -> int:
    from labeling_ui.export import export_project

    project = args.project_option or args.project
    if not project or (args.project_option and args.project and args.project_option != args.project):
        raise AlignError("name one project: align label export PROJECT --out FILE (or --project PROJECT)")
    kind = args.format if args.format in ("pairs", "kto", "sft") else "pairs"
    file_format = args.format if args.format in ("jsonl", "parquet") else None
    count = export_project(_store(args), project, args.out, mode=args.mode, file_format=file_format, kind=kind)
    what = {"pairs": "preference pairs", "kto": "KTO rows (prompt, completion, label)",
            "sft": "SFT rows (prompt, completion)"}[kind]
    print(f"wrote {count} {what} to {args.out}")
    return 0


def _leaderboard(args: argparse.Namespace) -> int:
    import json

    from labeling_ui.admin import leaderboard_report

    report = leaderboard_report(_store(args), args.project, resamples=args.resamples, seed=args.seed)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.project}: {report['votes']} votes ({report['both_bad']} both bad, counted as ties)")
    for column in ("rank", "model", "Elo", "95% CI", "Bradley-Terry", "95% CI", "votes", "win rate"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for rank, row in enumerate(report["rows"], start=1):
        table.add_row(
            str(rank), row["model"], f"{row['elo']:.0f}", "{:.0f} - {:.0f}".format(*row["elo_ci"]),
            f"{row['bt']:.0f}", "{:.0f} - {:.0f}".format(*row["bt_ci"]), str(row["votes"]), f"{row['win_rate']:.3f}",
        )
    Console(width=120).print(table)
    return 0
