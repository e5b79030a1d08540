"""``detox easyedit-stats``: write the second-moment statistics ROME (``mom2_adjustment``) and MEMIT read, offline."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from registry import Command, HyperParamsError
from registry.commandline import hparams_from_args, load_model_from_args

from .hparams import KeyValueHyperParams
from .stats import read_texts, write_stats

logger = logging.getLogger(__name__)


def add_stats_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text", type=Path, default=None,
                        help="texts to compute them on (paragraphs, or one per line); default: the docstrings of "
                             "Python's standard library")
    parser.add_argument("--overwrite", action="store_true", help="replace existing statistics files")


def run_stats(args: argparse.Namespace) -> int:
    hparams = hparams_from_args(args)
    if not isinstance(hparams, KeyValueHyperParams):
        raise HyperParamsError("easyedit-stats needs --hparams of ROME or MEMIT (e.g. --hparams MEMIT/smollm2-135m)")
    texts = None if args.text is None else read_texts(args.text)  # read before the model loads
    model, tokenizer, _ = load_model_from_args(args, hparams)
    for path in write_stats(model, tokenizer, hparams, texts, overwrite=args.overwrite):
        print(path)
    return 0


COMMANDS = (
    Command("easyedit-stats", "write the second-moment statistics EasyEdit's ROME and MEMIT read (offline)",
            run_stats, add_stats_arguments,
            examples=("detox easyedit-stats --hparams MEMIT/smollm2-135m",
                      "detox easyedit-stats --hparams my-memit.yaml --text corpus.txt --overwrite")),
)
