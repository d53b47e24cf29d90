"""Comparing console output: rich wraps long lines at the terminal's width, anywhere in a path."""


def squeeze(text: str) -> str:
    """``text`` without any whitespace, so a wrapped line still contains what was printed."""
    return "".join(text.split())
