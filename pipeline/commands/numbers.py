"""Argument types that check numbers at parse time, so a bad value is one line before any work starts."""

from __future__ import annotations

import argparse
import math
from typing import Callable

from models.architecture import HEADS


def number(kind: type, minimum: float, maximum: float, *, above: bool = False) -> Callable[[str], float]:
    """An argparse type: ``kind`` (int or float), finite, >= ``minimum`` (> with ``above``), <= ``maximum``. Every
    number has a maximum: an absurd value (1e23 s, a 10^20-pixel side) is refused here, not deep in a library."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        low_ok = value > minimum if above else value >= minimum
        if not low_ok or (maximum is not None and value > maximum) or (kind is float and not math.isfinite(value)):
            bound = f"{'>' if above else '>='} {minimum:g}" + (f" and <= {maximum:g}" if maximum is not None else "")
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {bound}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its message
    return parse


POSITIVE_INT = number(int, 1, 10**9)
COUNT = number(int, 0, 10**9)  # 0 allowed (none, or off)
POSITIVE = number(float, 0, 10**6, above=True)
FPS = number(float, 0.01, 1000)  # frame rates: a video stores them as a fraction with a small denominator
SIDE = number(int, 8, 4096)  # model input sides, in pixels
SECONDS = number(float, 0, 10**6)  # 0 allowed: do not wait
FRACTION = number(float, 0, 1, above=True)
BATCH_DELAY_MS = number(float, 0, 1000)  # a batching stage's wait for more frames: beyond a second no stream is live


def listed(parse: Callable[[str], float]) -> Callable[[str], list]:
    """An argparse type for a comma-separated list, each item checked by ``parse``."""

    def parse_list(text: str) -> list:
        items = [item.strip() for item in text.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers")
        return [parse(item) for item in items]

    parse_list.__name__ = "list"
    return parse_list


def heads(text: str) -> tuple[int, ...] | str:
    """``all`` or distinct attention head indices such as ``0,2,4,5``."""
    if text == "all":
        return text
    values = tuple(listed(number(int, 0, HEADS - 1))(text))
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r} names a head twice")
    return values


def input_size(text: str) -> tuple[int, int]:
    """``HxW`` model input size, each side within SIDE's bounds."""
    parts = text.lower().split("x")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HEIGHTxWIDTH, e.g. 224x264")
    h, w = (SIDE(part) for part in parts)
    return h, w
