""""Did you mean ...?": the closest valid names to a misspelt key, group option, experiment or command."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from omegaconf import DictConfig, OmegaConf

_ABSENT = object()


def _abbreviates(short: str, long: str) -> bool:
    """`lr` for `learning_rate`, `wd` for `weight_decay`: the same first letter, the rest in order."""
    if not short or not long or short[0] != long[0] or len(short) >= len(long):
        return False
    letters = iter(long)
    return all(ch in letters for ch in short)


def closest(word: str, names: Iterable[str], n: int = 3) -> list[str]:
    names = sorted(set(names))
    scored = sorted(((difflib.SequenceMatcher(None, word, c).ratio(), c) for c in names), reverse=True)
    # Only the names about as close as the best one: `tranier.epochs` is trainer.epochs, not trainer.threads too.
    found = [c for score, c in scored[:n] if score >= 0.6 and score >= scored[0][0] - 0.08]
    if not found:  # an abbreviation either way round (learning_rate -> lr, wd -> weight_decay)
        found = [c for c in names if _abbreviates(c, word) or _abbreviates(word, c)][:n]
    return found


def did_you_mean(word: str, names: Iterable[str]) -> str:
    """'; did you mean X?' (or 'X or Y'), or '' when nothing is close."""
    return _phrase(closest(word, names))


def _phrase(found: list[str]) -> str:
    if not found:
        return ""
    return "; did you mean " + (found[0] if len(found) == 1 else ", ".join(found[:-1]) + " or " + found[-1]) + "?"


def all_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in cfg.keys() if isinstance(cfg, DictConfig) else []:
        full = f"{prefix}{key}"
        keys.append(full)
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            keys += all_keys(child, full + ".")
    return keys


def has_key(cfg: DictConfig, key: str) -> bool:
    return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False) is not _ABSENT


def unknown_key(cfg: DictConfig, key: str, groups: Iterable[str] = ()) -> str:
    """The message for a key `cfg` does not have: within its own block first (optimizer.learning_rate ->
    optimizer.lr), then anywhere (trainer.epoch -> trainer.epochs, optimzer -> optimizer), then by its last
    part alone (epochs -> trainer.epochs)."""
    parent, _, leaf = key.rpartition(".")
    found: list[str] = []
    block = OmegaConf.select(cfg, parent, default=None) if parent else None
    if isinstance(block, DictConfig):
        found = [f"{parent}.{k}" for k in closest(leaf, [str(k) for k in block.keys() if not str(k).startswith("_")])]
    names = [k for k in all_keys(cfg) if not k.rpartition(".")[2].startswith("_")] + list(groups)
    if not found:  # at the same depth: a key's misspelt block (tranier.epochs) or a misspelt group (optimzer)
        found = closest(key, [n for n in names if n.count(".") == key.count(".")])
    if not found:
        by_leaf: dict[str, list[str]] = {}
        for name in names:
            by_leaf.setdefault(name.rpartition(".")[2], []).append(name)
        found = [full for near in closest(leaf, by_leaf) for full in by_leaf[near]][:3]
    return f"unknown key '{key}'" + (_phrase(found) or ": see every key with `trainlab train --cfg job`")
