"""Argument types the commands share."""
import argparse
import math


def positive(kind):
    def parse(text):
        value = kind(text)
        if not (value > 0 and math.isfinite(value)):  # nan > 0 is False too
            raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names it in "invalid int value: 'x'"

    return parse
