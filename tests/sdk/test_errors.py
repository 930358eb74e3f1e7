"""Tests for sdk/prvr_sdk/errors.py: the class hierarchy and the exit-code contract."""

from __future__ import annotations

import pickle

import pytest

from prvr_sdk.errors import (
    EXIT_CODES,
    BackendUnavailableError,
    BundleError,
    ChecksumError,
    IndexMismatchError,
    InvalidInputError,
    ParityError,
    PrvrError,
    ShapeMismatchError,
    exit_code_for,
)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (PrvrError("x"), 1),
        (InvalidInputError("x"), 2),
        (ShapeMismatchError("x"), 2),
        (BackendUnavailableError("tensorrt", "gpu"), 3),
        (ParityError("x"), 4),
        (BundleError("x"), 5),
        (ChecksumError("x"), 5),
        (IndexMismatchError("x"), 6),
    ],
)
def test_exit_code_of_each_class(exc: PrvrError, code: int) -> None:
    assert exit_code_for(exc) == code
    assert exit_code_for(type(exc)) == code


def test_subclasses_inherit_the_code_of_their_nearest_ancestor() -> None:
    class ManifestVersionError(BundleError):
        pass

    class StaleChecksum(ChecksumError):
        pass

    class DtypeError(InvalidInputError):
        pass

    class SomethingElse(PrvrError):
        pass

    assert exit_code_for(ManifestVersionError("x")) == 5
    assert exit_code_for(StaleChecksum("x")) == 5
    assert exit_code_for(DtypeError("x")) == 2
    assert exit_code_for(SomethingElse("x")) == 1


def test_foreign_exceptions_get_the_generic_code() -> None:
    assert exit_code_for(RuntimeError("x")) == 1
    assert exit_code_for(ValueError("x")) == 1


def test_every_error_is_a_prvr_error_with_a_code() -> None:
    for cls in EXIT_CODES:
        assert issubclass(cls, PrvrError)
        assert cls.__doc__, f"{cls.__name__} needs a docstring saying when it is raised"
    assert set(EXIT_CODES.values()) == {1, 2, 3, 4, 5, 6, 7}


def test_index_errors_have_their_own_codes() -> None:
    from prvr_sdk.index import IndexConflictError, IndexFormatError, IndexLockedError

    assert exit_code_for(IndexFormatError("corrupt")) == 5  # like a corrupt bundle
    assert exit_code_for(IndexLockedError("busy", "/x/LOCK", {"pid": 1})) == 7  # busy: retry later
    assert exit_code_for(IndexConflictError("changed")) == 7


def test_value_errors_stay_catchable_as_value_error() -> None:
    for cls in (ShapeMismatchError, InvalidInputError, ParityError):
        with pytest.raises(ValueError):
            raise cls("bad")
    assert issubclass(ChecksumError, BundleError)


def test_backend_unavailable_names_backend_and_extra() -> None:
    exc = BackendUnavailableError("onnxruntime", "onnx")
    assert isinstance(exc, ImportError)
    assert "onnxruntime" in str(exc)
    assert 'pip install "prvr-sdk[onnx]"' in str(exc)
    assert (exc.backend, exc.extra) == ("onnxruntime", "onnx")


def test_backend_unavailable_keeps_detail_and_pickles() -> None:
    exc = BackendUnavailableError("tensorrt", "gpu", detail="libnvinfer.so.10 not found")
    assert "libnvinfer.so.10 not found" in str(exc)
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is BackendUnavailableError
    assert str(again) == str(exc)
