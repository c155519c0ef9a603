"""``adapterhub data ...``: commands on data sets.

adapterhub data instructions rotten_tomatoes data/rt-instructions
adapterhub data instructions my_task/ my_task-instructions --template 'Is this review positive or negative?\\n{text}'

Imports nothing heavy: the data layer loads and writes data without torch.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "data", help="prepare data sets (e.g. turn a labelled task into instructions)"
    )
    commands = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    parser.set_defaults(handler=lambda args: _help(parser))
    _register_instructions(commands)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def _register_instructions(commands: Any) -> None:
    parser = commands.add_parser(
        "instructions",
        help="turn a labelled task (classification, multiple choice) into an instruction (generation) folder",
        description="Write DST/task.json (kind generation, the allowed answers) and DST/train.jsonl, "
        'DST/dev.jsonl with one {"messages": [user, assistant]} row per example: the user turn is an '
        "instruction naming the allowed answers with the text, the assistant turn is the answer as words (the "
        "class name, or the text of the right choice).",
    )
    parser.add_argument(
        "source",
        metavar="SRC",
        help="a task folder (task.json + train/dev), a data file or a data set name such as rotten_tomatoes",
    )
    parser.add_argument("destination", metavar="DST", help="the folder to write (new or empty)")
    parser.add_argument(
        "--template",
        metavar="TEXT",
        help="the user turn, with placeholders {text} (required), {answers} (the allowed answers, "
        "comma-separated) and, for multiple choice, {choices} (numbered, one per line); \\n is a new line. "
        "Default: 'Classify the text. Answer with one of: {answers}.\\n\\nText: {text}' (classification), "
        "'Choose the right answer. ...\\n\\nQuestion: {text}\\n\\nChoices:\\n{choices}' (multiple choice)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it already holds files")
    parser.set_defaults(handler=_instructions_command)


def _instructions_command(args: argparse.Namespace) -> int:
    from adapterhub.data.instructions import write_instructions

    template = None if args.template is None else args.template.replace("\\n", "\n")
    written = write_instructions(args.source, args.destination, template=template, overwrite=args.overwrite)
    task = written.task
    answers = f"; answers: {', '.join(task.answers)}" if task.answers else ""
    print(f"wrote {written.directory} (kind generation{answers})")
    for split, count in written.rows.items():
        print(f"  {split}: {count} rows -> {written.directory / (split + '.jsonl')}")
    return 0
