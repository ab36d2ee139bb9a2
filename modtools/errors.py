"""Typed errors of modtools.

Each subclasses a built-in exception so callers can catch broadly (``ValueError``) while
tests and applications match precisely (``EmptyMaskError``). Messages name the offending
value and what is allowed.
"""
from __future__ import annotations


class InvalidClassError(ValueError):
    """A class id is out of range, negative, not an integer, or duplicated."""


class EmptyClassError(ValueError):
    """A requested class (or class set) has no samples in a split."""


class UnknownNameError(ValueError):
    """A name (data set, architecture, profile, notebook, parameter) is not registered."""


class ParameterError(ValueError):
    """A notebook parameter has a value of the wrong type or out of range."""


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are missing and no download was attempted (or allowed)."""


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are not on disk and no download was attempted (or allowed)."""


class EmptyMaskError(ValueError):
    """A mask removes every kernel of a layer and no explicit policy allows it."""


class MaskShapeError(ValueError):
    """A mask does not fit the layer it is applied to (length, dtype, values)."""


class ModuleMismatchError(ValueError):
    """A module is applied to (or loaded against) a model it was not made from."""


class CheckpointError(RuntimeError):
    """A weights file is truncated, corrupted, or not a safe tensor file."""


class UnsupportedModelError(NotImplementedError):
    """A model contains layers the mask machinery or extraction cannot handle."""


class StoreError(RuntimeError):
    """A module store cannot do what was asked (base class of the store's errors)."""


class ModuleNotInStoreError(StoreError, KeyError):
    """No module of that name is in the store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class NoMatchError(StoreError, LookupError):
    """A search matched no module; the message says what the store holds."""


class CorruptCardError(StoreError, CheckpointError):
    """A module card in the store is missing keys, is not JSON, or its weights do not match it."""


class StoreNotWritableError(StoreError, PermissionError):
    """The store folder cannot be created or written."""


class NameConflictError(StoreError, FileExistsError):
    """A module name is already taken, in the store or by a job that is writing it."""


class InvalidNameError(StoreError, ValueError):
    """A module or job name that is not a plain file name (it could escape the store)."""


class SourceModelMissingError(StoreError, FileNotFoundError):
    """A module's source model is not in the model cache."""


class JobError(StoreError):
    """A background job cannot be started, found or cancelled."""


def check_range(name: str, value, ok: bool, allowed: str) -> None:
    """Raise ``ValueError`` naming ``name``, its ``value`` and what is ``allowed`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{name}={value!r} is out of range; allowed: {allowed}")


def check_classes(classes, num_classes: int, dataset: str = "", what: str = "classes") -> list[int]:
    """Validate a list of class ids against ``range(num_classes)``; return them as ints.

    Raises:
        InvalidClassError: non-integer, out of range, or duplicated ids; an empty list.
    """
    where = f" of data set {dataset!r}" if dataset else ""
    try:
        items = list(classes)
    except TypeError:
        items = [classes]
    if not items:
        raise InvalidClassError(f"{what} is empty; give at least one class id in 0..{num_classes - 1}{where}")
    out: list[int] = []
    for c in items:
        if isinstance(c, bool) or not isinstance(c, (int,)) and not (hasattr(c, "__index__") and not isinstance(c, float)):
            raise InvalidClassError(f"class id {c!r} in {what} is not an integer; valid ids are 0..{num_classes - 1}{where}")
        c = int(c)
        if c < 0 or c >= num_classes:
            raise InvalidClassError(f"class id {c} in {what} is out of range; valid ids are 0..{num_classes - 1}{where}")
        if c in out:
            raise InvalidClassError(f"class id {c} appears twice in {what}{where}; each class may be named once")
        out.append(c)
    return out
