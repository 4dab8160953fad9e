"""The dtab layer's error family. Pure: no I/O."""

from __future__ import annotations


class DtabError(Exception):
    """Base of every error the routing language raises."""


class DtabSyntaxError(DtabError, ValueError):
    """Text that does not read as a path, prefix, tree or dtab.

    `str(err)` is Finagle's wording (docs/dtab.md §2.4), which the delegator's 400 bodies echo:
    `'/' expected but 'i' found at '[i]nvalid-param'`.
    """

    def __init__(self, message: str, offset: int, text: str) -> None:
        super().__init__(message)
        self.offset = offset
        self.text = text


class BindError(DtabError):
    """Binding a name failed (not the same as binding to nothing, which is a tree)."""


class NamerError(BindError):
    """A namer could not answer a lookup."""


class UnknownNamer(NamerError):
    """`/$/<name>/…` where no system namer is called `<name>`."""


class MaxDepthExceeded(BindError):
    """A rewrite chain went deeper than the limit (docs/dtab.md §8.2): loops always end here."""

    def __init__(self, max_depth: int) -> None:
        super().__init__(f"Max recursion level: {max_depth} reached in Namer lookup")
        self.max_depth = max_depth
