"""The exception tree (API.md §8): upstream names, one class per status code, one translation point."""

from __future__ import annotations

import ast
import pathlib
import pickle

import pytest

import vineyard
from vineyard import errors
from vineyard.errors import StatusCode, VineyardException, error_from_status

UPSTREAM_TOP_LEVEL = [
    "ArrowError", "AssertionFailed", "ConnectionError", "ConnectionFailed", "EndOfFile", "EtcdError",
    "Invalid", "InvalidStreamState", "IOError", "KeyError", "MetaTreeInvalid", "MetaTreeLinkInvalid",
    "MetaTreeNameInvalid", "MetaTreeNameNotExists", "MetaTreeSubtreeNotExists", "MetaTreeTypeInvalid",
    "MetaTreeTypeNotExists", "NotEnoughMemory", "NotImplemented", "ObjectExists", "ObjectNotExists",
    "ObjectNotSealed", "ObjectSealed", "StreamDrained", "StreamFailed", "TypeError", "UnknownError",
    "UserInputError", "VineyardServerNotReady",
]
UPSTREAM_C_ONLY = [
    "ObjectIsBlob", "ObjectTypeError", "AlreadyStopped", "RedisError", "StreamOpened", "GlobalObjectInvalid",
]

# upstream's code texts (status.h), the prefix of str(exc)
TEXTS = {
    1: "Invalid", 2: "Key error", 3: "Type error", 4: "IOError", 5: "End Of File", 6: "Not implemented",
    7: "Assertion failed", 8: "User input error", 11: "Object exists", 12: "Object not exists",
    13: "Object sealed", 14: "Object not sealed", 15: "Object not blob", 16: "Object type mismatch",
    31: "Vineyard server not ready", 32: "Arrow error", 33: "Connection failed", 34: "Connection error",
    35: "Etcd error", 37: "Redis error", 41: "Not enough memory", 42: "Stream drain", 43: "Stream failed",
    44: "Invalid stream state", 45: "Stream opened", 51: "Global object invalid", 255: "Unknown error",
}


@pytest.mark.parametrize("name", UPSTREAM_TOP_LEVEL)
def test_upstream_names_are_exported_at_top_level(name: str) -> None:
    cls = getattr(vineyard, f"{name}Exception")
    assert issubclass(cls, vineyard.VineyardException)
    assert issubclass(cls, RuntimeError)


@pytest.mark.parametrize("name", UPSTREAM_C_ONLY)
def test_upstream_internal_names_exist(name: str) -> None:
    assert issubclass(getattr(errors, f"{name}Exception"), VineyardException)


def test_vineyard_exception_is_a_runtime_error() -> None:
    assert issubclass(VineyardException, RuntimeError)
    assert errors.VineyardError is VineyardException


@pytest.mark.parametrize("code", [c for c in StatusCode if c is not StatusCode.OK])
def test_every_status_code_has_a_class(code: StatusCode) -> None:
    exc = error_from_status(int(code), "some context")
    assert type(exc) is not errors.UnknownErrorException or code is StatusCode.UNKNOWN_ERROR, code
    assert exc.code == code
    assert isinstance(exc, VineyardException)
    assert "some context" in str(exc)
    assert errors.class_for_code(code) is type(exc)


@pytest.mark.parametrize(("code", "text"), sorted(TEXTS.items()))
def test_messages_start_with_upstream_code_text(code: int, text: str) -> None:
    assert str(error_from_status(code, "detail")) == f"{text}: detail"


def test_unknown_codes_become_unknown_error_naming_the_code() -> None:
    exc = error_from_status(9999, "odd")
    assert type(exc) is errors.UnknownErrorException
    assert "9999" in str(exc)
    assert "odd" in str(exc)


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (errors.ObjectNotExistsException, KeyError),
        (errors.KeyErrorException, KeyError),
        (errors.TypeErrorException, TypeError),
        (errors.UnknownTypeError, TypeError),
        (errors.UserInputErrorException, ValueError),
        (errors.NotEnoughMemoryException, MemoryError),
        (errors.ConnectionFailedException, ConnectionError),
        (errors.ConnectionErrorException, ConnectionError),
    ],
)
def test_builtin_co_parents(cls: type, builtin: type) -> None:
    assert issubclass(cls, builtin)
    assert issubclass(cls, VineyardException)


@pytest.mark.parametrize(
    ("cls", "group"),
    [
        (errors.ObjectNotExistsException, errors.ObjectError),
        (errors.ObjectSealedException, errors.ObjectError),
        (errors.MetaTreeInvalidException, errors.MetaTreeError),
        (errors.NotEnoughMemoryException, errors.StoreError),
        (errors.StreamDrainedException, errors.StreamError),
        (errors.RemoteProtocolError, errors.ProtocolError),
        (errors.LocalProtocolError, errors.ProtocolError),
        (errors.ConnectionFailedException, errors.StoreUnavailable),
    ],
)
def test_tree_groups(cls: type, group: type) -> None:
    assert issubclass(cls, group)


def test_exceptions_pickle_with_their_context() -> None:
    exc = errors.ObjectNotExistsException("object o0000000000000001 gone", object_id=1)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    assert back.object_id == 1


def test_error_from_status_is_the_only_translation_point() -> None:
    """No module but errors.py builds exceptions from a reply's code (looks for ``_BY_CODE``
    and for code-to-class tables), and the client transport goes through error_from_status."""
    package = pathlib.Path(vineyard.__file__).parent
    offenders = []
    for path in package.rglob("*.py"):
        if path.name == "errors.py" and path.parent == package:
            continue
        text = path.read_text()
        if "_BY_CODE" in text or "class_for_code" in text:
            offenders.append(str(path))
        tree = ast.parse(text)
        for node in ast.walk(tree):
            # a subscript like reply["code"] feeding anything but error_from_status
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                if isinstance(func, ast.Name) and func.id == "error_from_status":
                    continue
                for arg in node.exc.args:
                    is_code = isinstance(arg, ast.Subscript) and isinstance(arg.slice, ast.Constant)
                    if is_code and arg.slice.value == "code":  # type: ignore[union-attr]
                        offenders.append(f"{path}:{node.lineno}")
    assert not offenders, offenders
    transport = (package / "transport.py").read_text()
    assert "error_from_status(" in transport


def test_errors_module_exports_are_sorted_and_resolve() -> None:
    assert errors.__all__ == sorted(errors.__all__)
    for name in errors.__all__:
        assert hasattr(errors, name), name
