"""Typed errors. Each message names the file, column, key or row at fault and what was expected."""

from __future__ import annotations


class RerankEngineError(Exception):
    """Base class for every error this project raises on purpose."""


class ConfigError(RerankEngineError, ValueError):
    """A configuration key holds a value the job cannot run with."""


class InputError(RerankEngineError, ValueError):
    """Input data (a file, a column, a pair) is not what the component expects."""


class JobTimeoutError(RerankEngineError, TimeoutError):
    """A job ran past its `timeout_s`; the message names what it was doing."""


class ModelNotFoundError(RerankEngineError, FileNotFoundError):
    """A model folder, ONNX file or manifest is missing."""


class ModelFormatError(RerankEngineError, ValueError):
    """A model file exists but cannot be used (corrupted, wrong inputs, unexpected outputs)."""


class ExportValidationError(RerankEngineError):
    """The exported graph disagrees with the PyTorch reference beyond tolerance."""

    def __init__(self, message: str, *, max_abs_diff: float, shape: tuple[int, int], tolerance: float):
        super().__init__(message)
        self.max_abs_diff = max_abs_diff
        self.shape = shape
        self.tolerance = tolerance


class ScaleMismatchError(RerankEngineError, ValueError):
    """A threshold is applied to scores of another model or another scale."""


class MissingExtraError(RerankEngineError, ImportError):
    """An optional dependency is missing; the message names the extra that provides it."""


def require(module: str, extra: str | None = None, *, package: str | None = None):
    """Import `module` or raise MissingExtraError saying what to install: the pip extra `extra` of
    rerank-engine (one of pyproject.toml's optional-dependencies) where one provides it, else the
    distribution `package`, a dependency of rerank-engine itself."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        how = f"pip install 'rerank-engine[{extra}]'"
        if extra is None:
            how = f"pip install '{package or module}' (a dependency of rerank-engine; reinstalling it does)"
        raise MissingExtraError(f"{module!r} is not installed; install it with: {how}") from exc
