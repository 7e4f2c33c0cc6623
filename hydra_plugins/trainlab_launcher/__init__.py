"""trainlab's Hydra launcher plugin (`hydra/launcher=parallel`). Hydra loads launchers only from the
`hydra_plugins` namespace package; the code is in trainlab/cli/launcher.py."""
