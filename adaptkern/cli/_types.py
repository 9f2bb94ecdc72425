"""Argument types for the command line: each parses one flag's value and states its rule
when the value breaks it (argparse then exits 2 with one line naming the flag)."""

import argparse
import math


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``adaptkern SUB: error: ...`` (exit 2),
    without the usage block: it runs to several lines for these subcommands."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(text, kind):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")


def int_at_least(minimum: int):
    """An integer >= ``minimum``."""

    def parse(text):
        value = _number(text, int)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def positive_float(text):
    """A finite number > 0 (FLOPs, losses, milliseconds)."""
    value = _number(text, float)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def fraction(text):
    """A number strictly between 0 and 1 (a confidence level)."""
    value = _number(text, float)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}")
    return value


def device(text):
    """cpu, cuda or cuda:N for a GPU that exists here."""
    import torch

    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine; use cpu")
        if dev.index is not None and dev.index >= count:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
    return text
