"""The one exception type the CLI turns into a one-line message and exit code 2, and the one way a wrong name
is reported: with the closest valid one."""


class UserError(Exception):
    """Bad input the user can fix; the message says what to do."""


def closest(name: str, valid, cutoff: float = 0.6) -> str | None:
    """The valid name most like ``name`` (difflib's ratio of at least ``cutoff``), or None."""
    import difflib

    found = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=cutoff)
    return found[0] if found else None


def unknown(kind: str, name: str, valid, cutoff: float = 0.6, label: str = "valid") -> UserError:
    """The error for a name that is not among ``valid``: the closest valid name, then all of them."""
    near = closest(name, valid, cutoff)
    hint = f" (did you mean '{near}'?)" if near else ""
    return UserError(f"unknown {kind} '{name}'{hint}; {label}: {', '.join(map(str, valid))}")
