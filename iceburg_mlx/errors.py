"""Typed errors. The CLI turns each into one line on stderr and a non-zero exit."""

from __future__ import annotations


class IceburgError(Exception):
    """Base class: a user-facing problem with a one-line message."""

    exit_code = 2


class ModelNotFoundError(IceburgError):
    """A model name, path, repo id or Ollama tag that cannot be resolved."""


class UnsupportedModelError(IceburgError):
    """An architecture, tensor type or file layout we cannot load."""


class BadModelFileError(IceburgError):
    """A file that is not what it claims to be (not GGUF, truncated, inconsistent)."""


class ConfigError(IceburgError):
    """A recipe or option with a wrong key, type or value."""


class DataError(IceburgError):
    """A data file that cannot be read or fails validation (message names file:line)."""


class AdapterError(IceburgError):
    """An adapter that cannot be found or does not fit the base model."""


class ExportError(IceburgError):
    """A fuse/export request that cannot be carried out (unknown quant type, unmapped architecture)."""


class ReviewError(IceburgError):
    """A review session that cannot be read or created, or a judgment that does not fit its session."""
