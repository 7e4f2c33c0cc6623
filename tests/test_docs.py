"""The docs cannot go stale: every `trainlab ...` line in a code block of README.md or docs/*.md names a command that
exists and options, keys, groups and experiments that compose against the real config; every default written in a
key table is what conf/ composes to; every relative link and image exists. A renamed key fails here, not a user."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from trainlab.cli.main import COMMANDS

from helpers import REPO, compose

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
HYDRA_CONFIGS = {name: command.config for name, command in COMMANDS.items() if command.config}
# Keys of a command of its own (not of the run's config): checked by the command, not composed.
OWN = {"train": ("resume", "overwrite"), "evaluate": ("ckpt", "split", "weights"),
       "summary": ("ckpt", "num_classes", "depth"), "lr-find": ()}
USER_FOLDERS = ("-cd", "-cp", "-cn", "--config-dir", "--config-path", "--config-name")


def command_lines(text: str) -> list[str]:
    """The `trainlab ...` lines of the fenced code blocks, comments cut; an error transcript (`$ trainlab ...`
    followed by its `trainlab: error:` line) shows a mistake on purpose and is left out."""
    found, inside, lines = [], False, re.sub(r"\\\n\s*", " ", text).splitlines()  # continuation lines joined
    for i, raw in enumerate(lines):
        if raw.strip().startswith("```"):
            inside = not inside
            continue
        line = raw.strip()
        transcript = line.startswith("$ ")
        line = line.removeprefix("$ ")
        if not inside or not line.startswith("trainlab "):
            continue
        if transcript and i + 1 < len(lines) and lines[i + 1].startswith("trainlab: error"):
            continue
        found.append(re.split(r"\s{2,}#", line)[0].strip())
    return found


def _known_options(command: str) -> tuple[str, ...] | None:
    import importlib

    from trainlab.cli.main import COMMANDS

    module = importlib.import_module(f"trainlab.commands.{COMMANDS[command].module}")
    return getattr(module, "OPTIONS", getattr(module, "EXPORT_OPTIONS", None))


def problem(line: str, data_root: Path) -> str | None:
    """What is wrong with one documented command line (None: it composes)."""
    from trainlab.cli.compose import preflight
    from trainlab.cli.main import COMMANDS
    from trainlab.core.config import load_settings
    from trainlab.core.errors import TrainlabError

    # bash expands `~` after `=` (`model.weights=~/w.pth`) and `$PWD`: so does this reading of the line.
    words = [re.sub(r"(^|=)~/", r"\1/home/user/", w).replace("$PWD", "/home/user") for w in shlex.split(line)[1:]]
    if not words or words[0] in ("--help", "--version"):
        return None
    command, args = words[0], words[1:]
    if command not in COMMANDS:
        return f"no command {command!r}"
    if command not in HYDRA_CONFIGS:
        known = _known_options(command)
        keys = [a.split("=", 1)[0] for a in args if "=" in a and not a.startswith("-")]
        if known and command in ("predict", "export", "visualize"):
            unknown = [k for k in keys if k not in known]
            return f"{command} does not know {unknown}" if unknown else None
        flags = [a.split("=", 1)[0] for a in args if a.startswith("--")]
        unknown = [f for f in flags if known and f not in known]
        return f"{command} does not know {unknown}" if unknown else None
    if any(a.split("=", 1)[0] in USER_FOLDERS for a in args):
        return None  # composed from a user's own folder
    kept, items = [], iter(args)
    for arg in items:
        if arg in ("--cfg", "-c", "-sc", "--shell-completion", "--package", "-p"):
            next(items, None)
            continue
        if arg.startswith("-") and arg not in ("-m", "--multirun"):
            continue
        key = arg.split("=", 1)[0].lstrip("+~")
        if key in OWN[command]:
            continue
        kept.append(f"dataset.root={data_root}" if key == "dataset.root" else arg)
    # evaluate's and summary's other keys apply to a checkpoint's stored config: trainlab train's keys.
    name = "config" if command in ("evaluate",) or (command == "summary" and "ckpt=" in line) \
        else HYDRA_CONFIGS[command]
    try:
        cfg = preflight(kept, name, None)
        if cfg is not None and not any(a in ("-m", "--multirun") for a in kept):
            load_settings(cfg, require_data=False)
    except TrainlabError as e:
        return f"does not compose: {e}"
    except Exception as e:  # noqa: BLE001  (a schema error is the finding here)
        return f"{type(e).__name__}: {e}"
    return None


ALL_LINES = [(doc.name, line) for doc in DOCS for line in command_lines(doc.read_text())]


def test_the_docs_show_commands():
    assert len(ALL_LINES) > 60 and {d for d, _ in ALL_LINES} >= {"README.md", "commands.md", "sweeps.md"}


@pytest.mark.slow  # ~100 compositions, half a minute: in CI, not in the editing subset (the checks' own test is)
@pytest.mark.parametrize("doc, line", ALL_LINES, ids=[f"{d}:{i}" for i, (d, _) in enumerate(ALL_LINES)])
def test_every_documented_command_composes(doc, line, tmp_path, capsys):
    found = problem(line, tmp_path)
    assert found is None, f"{doc}: `{line}`: {found}\n{capsys.readouterr().err}"


def key_table_defaults(text: str) -> list[tuple[str, str]]:
    """(key, default as written) of every `| key | default | ... |` table; a row of several keys (`a`, `b`) gives
    each its own default (`x, y`) or the one default for all."""
    rows, in_table = [], False
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells and cells[:2] == ["key", "default"]:
            in_table = True
            continue
        if not cells:
            in_table = False
            continue
        if in_table and not set(cells[0]) <= set("-: "):
            keys = re.findall(r"`([^`]+)`", cells[0])
            defaults = [d.strip() for d in cells[1].split(",")] if len(keys) > 1 else [cells[1].strip()]
            defaults = defaults if len(defaults) == len(keys) else defaults * len(keys)
            rows += list(zip(keys, (d.strip("`") for d in defaults)))
    return rows


def _written(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


TABLE_ROWS = [(doc.name, key, default) for doc in DOCS for key, default in key_table_defaults(doc.read_text())]


def test_the_key_tables_cover_trainlabs_keys():
    keys = {key for _, key, _ in TABLE_ROWS}
    assert {"seed", "trainer.epochs", "trainer.precision", "checkpoint.monitor", "target.value"} <= keys


@pytest.mark.parametrize("doc, key, default", TABLE_ROWS, ids=[f"{d}:{k}" for d, k, _ in TABLE_ROWS])
def test_every_default_in_a_key_table_is_what_conf_composes_to(doc, key, default):
    cfg = compose([])
    assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", f"{doc}: no key {key} in conf/"
    assert _written(OmegaConf.select(cfg, key)) == default, f"{doc}: {key} is {OmegaConf.select(cfg, key)!r} in conf/"


LINKS = [(doc, target) for doc in DOCS for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text())
         if not target.startswith(("http://", "https://", "#", "mailto:"))]


@pytest.mark.parametrize("doc, target", LINKS, ids=[f"{d.name}:{t}" for d, t in LINKS])
def test_every_relative_link_and_image_exists(doc, target):
    assert (doc.parent / target.split("#")[0]).exists(), f"{doc.name} links to {target}, which does not exist"


@pytest.mark.parametrize("text, expected", [
    ("```\ntrainlab train trainer.epoch=3\n```", "does not compose"),
    ("```\ntrainlab train optimizer=adm\n```", "does not compose"),
    ("```\ntrainlab train +experiment=resnet19_tiny\n```", "does not compose"),
    ("```\ntrainlab trian\n```", "no command"),
    ("```\ntrainlab predict ckpt=x inputs=y\n```", "does not know"),
])
def test_the_checks_fail_on_a_broken_copy(text, expected, tmp_path, capsys):
    """A renamed key, option, experiment or command in a code block is caught (and an error transcript is not)."""
    [line] = command_lines(text)
    assert expected in (problem(line, tmp_path) or "")
    assert command_lines("```\n$ trainlab train optimizer=adm\ntrainlab: error: unknown optimizer\n```") == []
    wrong = "| key | default | meaning |\n|---|---|---|\n| `trainer.epochs` | 11 | |\n"
    [(key, default)] = key_table_defaults(wrong)
    assert _written(OmegaConf.select(compose([]), key)) != default
