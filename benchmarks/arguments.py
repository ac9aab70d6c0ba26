"""Argument types of the benchmark scripts: a bad value is an argparse usage error that
names the flag, before anything is imported, compiled or written."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_ints(text: str) -> list[int]:
    """A comma-separated list of positive integers, e.g. "4096,16384"."""
    return [positive_int(item) for item in text.split(",")]


def names_from(known):
    """A type for a comma-separated list of names, each one of `known`."""
    known = tuple(known)

    def parse(text: str) -> list[str]:
        names = text.split(",")
        unknown = [name for name in names if name not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(map(repr, unknown))}; choose from {', '.join(known)}")
        return names

    return parse
