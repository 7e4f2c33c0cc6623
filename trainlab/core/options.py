"""The `key=value` options of the commands that take no Hydra config (predict, export, visualize, compare): read,
checked against what the command knows, and turned into numbers, each mistake one line."""

from __future__ import annotations

from trainlab.core.errors import ConfigError
from trainlab.core.suggest import did_you_mean


def unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" else value


def key_values(command: str, args: list[str], known: tuple[str, ...]) -> dict[str, str]:
    """`key=value` arguments as a dict (quotes taken off), every key one of `known`."""
    loose = [a for a in args if "=" not in a]
    if loose:
        raise ConfigError(f"{command} takes key=value arguments only (got {loose[0]!r}); see trainlab {command} --help")
    options = {k: unquote(v) for k, v in (a.split("=", 1) for a in args)}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"{command} does not know {', '.join(unknown)}{did_you_mean(unknown[0], known)}: it takes "
                          f"{', '.join(known)}")
    return options


def positive(options: dict, key: str, default: int) -> int:
    value = options.get(key, str(default))
    if not str(value).isdigit() or int(value) < 1:
        raise ConfigError(f"{key} must be a positive integer (got {value})")
    return int(value)
