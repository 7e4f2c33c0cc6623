"""Turning config groups into objects: `hydra.utils.instantiate` with one-line errors, plus the few
keys trainlab reads itself before the rest goes to a `_target_`."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from trainlab.errors import ConfigError, TrainlabError


def build(node: DictConfig | dict, group: str, **kwargs: Any) -> Any:
    """Instantiate a group's `_target_`; a wrong key or type becomes one ConfigError line naming the group."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, TrainlabError):
            raise cause from None
        detail = " ".join(str(cause or e).split())
        raise ConfigError(f"cannot build {group} ({_target(node)}): {detail}; check the {group}.* keys") from None


def build_partial(node: DictConfig, group: str, **call_kwargs: Any) -> Any:
    """Instantiate a `_partial_: true` group and call it with what only the runner knows (num_classes, ...)."""
    make = build(node, group)
    try:
        return make(**call_kwargs)
    except TypeError as e:
        raise ConfigError(f"cannot build {group} ({_target(node)}): {e}; check the {group}.* keys") from None


def take(node: DictConfig, *keys: str, defaults: dict | None = None) -> tuple[dict, list[Any]]:
    """Split trainlab's own keys off a group: returns (the rest, as a plain dict, [values of keys])."""
    plain = OmegaConf.to_container(node, resolve=True)
    defaults = defaults or {}
    values = [plain.pop(k, defaults.get(k)) for k in keys]
    return plain, values


def _target(node: Any) -> str:
    try:
        return str(node.get("_target_", "?"))
    except AttributeError:
        return "?"
