"""Importers: SMI, Istio and Gateway API routing resources -> dtab entries and match
rules (see `common`). Used by `dtabproxy import` and by the `resources:` config key."""

from .common import ImportResult, ResourceError, import_documents, import_paths

__all__ = ["ImportResult", "ResourceError", "import_documents", "import_paths"]
