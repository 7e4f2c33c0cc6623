"""The `trainlab` command: a table of subcommands. Each is imported only when it runs, so `trainlab --help` stays
torch-free and fast; Hydra parses the rest of the command line of those that take a config.

User errors (bad config, data, paths) print one line on stderr and exit with status 2; set TRAINLAB_DEBUG=1 (or
HYDRA_FULL_ERROR=1) to see the traceback instead.
"""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass

import trainlab
from trainlab.cli.output import debug, fail
from trainlab.core.errors import TrainlabError


@dataclass(frozen=True)
class Command:
    module: str        # trainlab.commands.<module>
    help: str
    # Its primary config in conf/ (a Hydra command: the module has check and run), or None: the command takes its own
    # arguments (the module has USAGE and main).
    config: str | None
    needs_args: bool = True


COMMANDS = {
    "train": Command("train", "train a model from composed configs: `trainlab train +experiment=quickstart`", "config"),
    "evaluate": Command("evaluate", "metrics, predictions.csv and confusion.csv of a checkpoint: "
                        "`trainlab evaluate ckpt=<file|run_dir>`", "evaluate"),
    "predict": Command("predict", "top-k classes of new, unlabelled images: "
                       "`trainlab predict ckpt=<file|run_dir> input=<folder>`", None),
    "export": Command("export", "the model for other programs (safetensors, torchscript, onnx): "
                      "`trainlab export ckpt=... format=...`", None),
    "compare": Command("compare", "the images two checkpoints judge differently: `trainlab compare <A> <B> [n=10]`",
                       None),
    "visualize": Command("visualize", "feature maps and activation statistics of one image: "
                         "`trainlab visualize ckpt=... image=0`", None),
    "summary": Command("summary", "every layer with its output shape and parameters: "
                       "`trainlab summary +experiment=resnet18_tiny`", "summary"),
    "lr-find": Command("lr_find", "the learning-rate range test, a curve and a suggested optimizer.lr: "
                       "`trainlab lr-find +experiment=...`", "lr_find"),
    "diagnose": Command("diagnose", "what the curves of a run say (over-fitting, plateau, ...): "
                        "`trainlab diagnose <run_dir>`", None),
    "report": Command("report", "report.html + report.md of a run or a sweep: "
                      "`trainlab report <run_dir | multirun_dir>`", None),
    "cache": Command("cache", "what trainlab keeps in its cache folder, and removing one entry: "
                     "`trainlab cache [list | remove <name>]`", None, needs_args=False),
    "runs": Command("runs", "every run and sweep job in one table (status, metrics, speed): "
                    "`trainlab runs [dir ...] [--sort ...]`", None, needs_args=False),
}
USAGE = f"""usage: trainlab <command> [overrides ...]

A command-line experiment runner for PyTorch image classification (trainlab {trainlab.__version__}).

commands:
{chr(10).join(f"  {name:<10} {command.help}" for name, command in COMMANDS.items())}

`trainlab <command> --help` shows that command's config groups and Hydra's flags
(-m/--multirun, --cfg job, hydra.run.dir=...). Set TRAINLAB_DEBUG=1 to see tracebacks.
"""


def _plain(name: str, module, args: list[str]) -> None:
    """A command that takes its own arguments: its usage, or its main with console logging and user errors as one
    line."""
    if (not args and COMMANDS[name].needs_args) or (args and args[0] in ("-h", "--help")):
        print(module.USAGE, end="")
        sys.exit(0 if args else 2)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S", force=True)
    module.main(args)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        sys.exit(0 if argv else 2)
    if argv[0] == "--version":
        print(f"trainlab {trainlab.__version__}")
        return
    name, rest = argv[0], argv[1:]
    try:
        if name not in COMMANDS:
            from trainlab.cli.compose import choose
            from trainlab.core.suggest import did_you_mean

            raise TrainlabError(f"unknown command '{name}'" + choose(did_you_mean(name, COMMANDS), COMMANDS)
                                + " (see trainlab --help)")
        if COMMANDS[name].config:
            from trainlab.cli.hydra_job import run_hydra

            run_hydra(name, rest, COMMANDS)  # imports the command's module only once a job needs it
        else:
            _plain(name, importlib.import_module(f"trainlab.commands.{COMMANDS[name].module}"), rest)
    except KeyboardInterrupt:
        print("trainlab: interrupted", file=sys.stderr)
        sys.exit(130)
    except TrainlabError as e:  # the one place a user error becomes its line and exit status
        if debug():
            raise
        fail(str(e), code=e.exit_code, prefix=e.label)
    except OSError as e:  # a full disk or a read-only folder met by a library's own writer (matplotlib, pandas)
        from trainlab.core.fs import WRITE_ERRNOS, write_error

        if e.errno not in WRITE_ERRNOS or debug():
            raise
        fail(str(write_error(e.filename or "a file", e)))
