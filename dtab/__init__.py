"""dtab: the routing language (Finagle-style delegation tables), pure standard library.

Read and show paths, prefixes, name trees and dtabs; look up, bind and explain names;
compile a table for the data plane. See docs/dtab.md; nothing here does I/O.
"""

from .bind import MAX_DEPTH, bind, lookup_chain
from .compile import CompiledDtab, OverlayTable, compile
from .delegate import DelegationDepthExceeded, delegate_json, explain
from .errors import BindError, DtabError, DtabSyntaxError, MaxDepthExceeded, NamerError, UnknownNamer
from .local import local_dtab
from .namer import Namer, namer_lookup, system_lookup
from .parse import read_dentry, read_dtab, read_path, read_prefix, read_tree
from .path import WILDCARD, Path, Prefix
from .table import Dentry, Dtab
from .tree import (
    EMPTY,
    FAIL,
    NEG,
    Alt,
    Bound,
    Inet,
    Leaf,
    NameTree,
    Union,
    Weighted,
    evaluate,
    show_weight,
    simplify,
)

__all__ = [
    "EMPTY", "FAIL", "MAX_DEPTH", "NEG", "WILDCARD",
    "Alt", "BindError", "Bound", "CompiledDtab", "DelegationDepthExceeded", "Dentry", "Dtab",
    "DtabError", "DtabSyntaxError", "Inet", "Leaf", "MaxDepthExceeded", "NameTree", "Namer",
    "NamerError", "OverlayTable", "Path", "Prefix", "Union", "UnknownNamer", "Weighted",
    "bind", "compile", "delegate_json", "evaluate", "explain", "local_dtab", "lookup_chain",
    "namer_lookup", "read_dentry", "read_dtab", "read_path", "read_prefix", "read_tree",
    "show_weight", "simplify", "system_lookup",
]
