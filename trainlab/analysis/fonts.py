"""Fonts for the text trainlab draws into pictures (class names, folder names): matplotlib's default font, DejaVu
Sans, has no Chinese, Japanese or Korean glyphs and draws an empty box for each. Here the machine's own CJK fonts
(Noto Sans CJK / Source Han, WenQuanYi, Microsoft YaHei, SimHei, PingFang, Hiragino, ...) are found once and given
to matplotlib as per-glyph fallbacks behind DejaVu Sans. Where none covers the text, one log line says what to
install and the caller draws class indices instead (the per-glyph warnings are kept off the console)."""

from __future__ import annotations

import functools
import logging
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import matplotlib
from matplotlib import font_manager

log = logging.getLogger(__name__)

# File names of the fonts that carry CJK glyphs on Linux, Windows and macOS (lower case, no separators).
CJK_FONT_FILES = ("notosanscjk", "notoserifcjk", "sourcehansans", "sourcehanserif", "wqy", "msyh", "simhei", "simsun",
                  "simkai", "pingfang", "hiragino", "stheiti", "droidsansfallback", "uming", "ukai", "notosanssc",
                  "notosanstc", "notosansjp", "notosanskr", "malgun", "nanumgothic", "msgothic", "yugoth", "arplumin")
INSTALL = ("install a font with these characters - Debian/Ubuntu: sudo apt install fonts-noto-cjk; Fedora: "
           "google-noto-sans-cjk-fonts; Windows and macOS have one (Microsoft YaHei, PingFang) - then run again")
DEFAULT_FAMILY = "DejaVu Sans"


@functools.cache
def _charmap(path: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


@functools.cache
def _fallbacks() -> tuple[tuple[str, str], ...]:
    """(family name, file) of every CJK font on this machine, registered with matplotlib (its font list is cached
    once per matplotlib install, so a font installed later is not in it until added)."""
    found = []
    for path in sorted(font_manager.findSystemFonts()):
        plain = re.sub(r"[\s_\-]", "", Path(path).name.lower())
        if not any(key in plain for key in CJK_FONT_FILES):
            continue
        try:
            font_manager.fontManager.addfont(path)
            found.append((font_manager.FontProperties(fname=path).get_name(), path))
        except (OSError, RuntimeError, ValueError):
            continue
    return tuple(found)


def _default_charmap() -> frozenset[int]:
    return _charmap(font_manager.findfont(DEFAULT_FAMILY, fallback_to_default=True))


def use_fonts_for(texts: Iterable[str]) -> bool:
    """Set matplotlib up to draw `texts`; True when every character has a glyph (in DejaVu Sans or a fallback font
    this machine has). False: no installed font has some of them; logged once, with what to install."""
    missing = {ord(ch) for text in texts for ch in str(text) if not ch.isspace()} - _default_charmap()
    if not missing:
        return True
    chosen = []
    for family, path in _fallbacks():
        covered = missing & _charmap(path)
        if covered and family not in chosen:
            chosen.append(family)
            missing -= covered
        if not missing:
            break
    if chosen:
        matplotlib.rcParams["font.family"] = [DEFAULT_FAMILY, *chosen]  # per-glyph fallback (matplotlib >= 3.6)
        logging.getLogger("matplotlib.font_manager").addFilter(_weight_notes)
    if not missing:
        return True
    _say_once(f"no installed font has the characters {''.join(sorted(map(chr, missing)))[:12]!r} of the class or "
              f"folder names: pictures show class indices instead (classes.csv and the report map them to names); "
              f"{INSTALL}")
    # The line above says it once; matplotlib would warn once per character and picture.
    warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")
    return False


def _weight_notes(record: logging.LogRecord) -> bool:
    """matplotlib's 'findfont: Failed to find font weight normal for WenQuanYi Zen Hei, now using 500' (a CJK font
    that has one weight only), warned for every picture: not news for the console. Its other warnings pass."""
    return not record.getMessage().startswith("findfont: Failed to find font weight")


@functools.cache
def _say_once(line: str) -> None:
    log.warning(line)


def drawable_labels(names: list[str]) -> list[str]:
    """`names` where they can be drawn, else their indices ('0', '1', ...)."""
    return list(names) if use_fonts_for(names) else [str(i) for i in range(len(names))]
