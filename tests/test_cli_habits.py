"""What users of Hydra-based tools expect of the command line: shell completion, their own config folders
(hydra.searchpath, -cd), one line for a plugin that is not installed, and output that is not wrapped in a pipe."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FAST, assert_one_line, run, shell

EXPERIMENT = """# @package _global_
defaults:
  - override /dataset: fake
  - override /model: small_cnn
trainer:
  epochs: 1
"""


def query(capsys, monkeypatch, line: str) -> list[str]:
    """What the installed completer asks trainlab for the words that may follow `line`."""
    monkeypatch.setenv("COMP_LINE", line)
    monkeypatch.setenv("COMP_POINT", str(len(line)))
    code, out, err = run(capsys, line.split()[1], "-sc", "query=bash")
    assert code == 0, err
    return out.split()


def test_completion_answers_groups_options_and_keys(capsys, monkeypatch):
    assert query(capsys, monkeypatch, "trainlab train optimizer=ad") == \
        ["optimizer=adadelta", "optimizer=adagrad", "optimizer=adam", "optimizer=adamw"]
    assert query(capsys, monkeypatch, "trainlab train +experiment=") == \
        ["+experiment=mnist_mlp", "+experiment=quickstart", "+experiment=resnet18_tiny"]
    assert query(capsys, monkeypatch, "trainlab train trainer.ep") == ["trainer.epochs="]
    assert "ckpt=" in query(capsys, monkeypatch, "trainlab evaluate ck")


@pytest.mark.slow
def test_the_installed_bash_completer_completes_commands_and_overrides(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    script = subprocess.run([sys.executable, "-m", "trainlab", "train", "-sc", "install=bash"], capture_output=True,
                            text=True, env=env, check=True).stdout
    (tmp_path / "completion.bash").write_text(script)

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        shell = (f'source {tmp_path / "completion.bash"}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; '
                 f'COMP_LINE="{line}"; COMP_POINT={len(line)}; _trainlab_completion; echo "${{COMPREPLY[@]}}"')
        done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert complete("trainlab", "re") == ["report"]
    assert complete("trainlab", "train", "scheduler=one") == ["scheduler=onecycle"]


@pytest.mark.slow
def test_a_users_config_folder_counts_for_options_and_experiments(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine" / "experiment").mkdir(parents=True)
    (tmp_path / "mine" / "experiment" / "small.yaml").write_text(EXPERIMENT)
    for where in (["-cd", str(tmp_path / "mine")], [f"hydra.searchpath=[file://{tmp_path / 'mine'}]"]):
        code, out, err = run(capsys, "train", *where, "+experiment=small", "--cfg", "job")
        assert code == 0, err
        code, out, err = shell("train", *where, "+experiment=smal", "trainer.limit_train_batches=1")
        assert_one_line(code, out, err, "unknown experiment 'smal'; did you mean small?", "quickstart")
    code, out, err = shell("train", "+experiment=small")  # without the folder: not an option
    assert_one_line(code, out, err, "unknown experiment 'small': choose one of mnist_mlp, quickstart, resnet18_tiny")


@pytest.mark.slow
def test_a_users_own_primary_config_with_cp_and_cn_is_checked_like_trainlabs(tmp_path, capsys, monkeypatch):
    """-cp DIR replaces trainlab's config folder (a relative DIR is the current folder's, not the Python file's
    as in a Hydra app of one's own), -cn picks the primary config in it; the preflight checks both."""
    from importlib.resources import as_file, files

    monkeypatch.chdir(tmp_path)
    with as_file(files("trainlab.conf")) as packaged:
        shutil.copytree(packaged, tmp_path / "mine", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    config = (tmp_path / "mine" / "config.yaml").read_text()
    (tmp_path / "mine" / "config.yaml").write_text(config.replace("epochs: 10", "epochs: 7"))
    (tmp_path / "mine" / "short.yaml").write_text(config.replace("optimizer: sgd", "optimizer: adamw"))
    code, out, err = run(capsys, "train", "-cp", "mine", "--cfg", "job")
    assert code == 0 and "epochs: 7" in out, err
    code, out, err = run(capsys, "train", "--config-path=mine", "-cn", "short", "--cfg", "job")
    assert code == 0 and "_target_: torch.optim.AdamW" in out, err
    assert_one_line(*shell("train", "-cp", "mine", "optimzer.lr=0.1"), "unknown key 'optimzer.lr'; did you "
                                                                            "mean optimizer.lr?")
    assert_one_line(*shell("train", "-cp", "mine", "-cn", "short", "optimizer=adamm"), "unknown optimizer "
                                                                                             "'adamm'; did you mean")
    assert_one_line(*shell("train", "-cp", "elsewhere"), "-cp elsewhere: ",
                    f"{tmp_path / 'elsewhere'} holds no config.yaml", "use -cd DIR")
    assert_one_line(*shell("train", "-cd", "nowhere"), "-cd nowhere: no such folder")
    assert_one_line(*shell("train", "-cp"), "--config-path needs a value: --config-path DIR")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # refused before anything was written


@pytest.mark.slow
def test_an_experiment_from_the_searchpath_trains(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine" / "experiment").mkdir(parents=True)
    (tmp_path / "mine" / "experiment" / "small.yaml").write_text(EXPERIMENT)
    code, _, err = run(capsys, "train", *FAST, f"hydra.searchpath=[file://{tmp_path / 'mine'}]", "+experiment=small",
                       "hydra.run.dir=run")
    assert code == 0, err
    assert (tmp_path / "run" / "summary.json").is_file() and "epoch 1/1" in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.slow
def test_a_plugin_that_is_not_installed_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine" / "hparams_search").mkdir(parents=True)
    (tmp_path / "mine" / "hparams_search" / "ng.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/sweeper: nevergrad\n")
    code, out, err = shell("train", "-cd", str(tmp_path / "mine"), "+hparams_search=ng")
    assert_one_line(code, out, err, "the Hydra sweeper 'nevergrad' is not installed: pip install "
                                    "hydra-nevergrad-sweeper")
    code, out, err = shell("train", "-m", *FAST, "seed=0,1", "hydra/launcher=ray")
    assert_one_line(code, out, err, "the Hydra launcher 'ray' is not installed: pip install hydra-ray-launcher")
    assert not (tmp_path / "multirun").exists()


def test_tables_are_not_wrapped_in_a_pipe():
    from trainlab.core.progress import console

    stream = console()  # the tests' stdout is not a terminal, like a pipe or a cluster's log
    with stream.capture() as captured:
        stream.print("x" * 150 + " /a/long/path/" + "y" * 100)
    assert len(captured.get().splitlines()) == 1


def test_the_command_line_answers_help_without_importing_torch():
    """`trainlab --help` and the commands' dispatch load no torch (seconds on a small machine); a command imports
    what it needs when it runs."""
    code = "import sys, trainlab.cli; print(sorted(m for m in ('torch', 'torchvision', 'hydra') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


@pytest.mark.parametrize("flags", [["-sc", "query=bash"], ["--cfg", "job"]])
def test_hydras_own_flags_answer_without_importing_torch(tmp_path, flags):
    """A Tab press asks `trainlab train -sc query=bash` for the choices: it answered in ~10 s when it imported the
    training code; Hydra's flags need only the config, so they leave torch out (~1.5 s)."""
    code = ("import sys\nfrom trainlab.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'torchmetrics') if m in sys.modules))")
    env = {**os.environ, "COMP_LINE": "trainlab train scheduler=one", "COMP_POINT": "28"}
    done = subprocess.run([sys.executable, "-c", code, "train", *flags], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    answer, imported = done.stdout.strip().rsplit("\n", 1)
    assert imported == "[]", done.stdout
    assert ("scheduler=onecycle" in answer) if "-sc" in flags else ("epochs:" in answer and "_target_:" in answer)
