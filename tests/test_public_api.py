"""The public surface: ``vineyard.__all__`` is sorted, complete and every name resolves."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import vineyard

EXPECTED = [
    "Blob", "BlobBuilder", "Client", "IPCClient", "InstanceStatus", "Object", "ObjectBuilder", "ObjectID",
    "ObjectMeta", "ObjectName", "RPCClient", "RemoteBlob", "RemoteBlobBuilder", "VineyardException",
    "ObjectNotExistsException", "NotEnoughMemoryException", "connect", "get", "put", "try_init",
    "shutdown", "get_current_socket", "builder_context", "resolver_context", "register_builtin_types",
]


def test_all_is_sorted_and_unique() -> None:
    assert vineyard.__all__ == sorted(vineyard.__all__)
    assert len(set(vineyard.__all__)) == len(vineyard.__all__)


@pytest.mark.parametrize("name", vineyard.__all__)
def test_every_exported_name_resolves(name: str) -> None:
    assert getattr(vineyard, name) is not None


@pytest.mark.parametrize("name", EXPECTED)
def test_upstream_names_are_exported(name: str) -> None:
    assert name in vineyard.__all__


@pytest.mark.parametrize(
    "module",
    ["vineyard.protocol", "vineyard.errors", "vineyard.ids", "vineyard.meta", "vineyard.client",
     "vineyard.transport", "vineyard.testing", "vineyard.deploy.local", "vineyard.store.allocator",
     "vineyard.store.objects", "vineyard.store.memory", "vineyard.store.server", "vineyard.store.cli"],
)
def test_core_modules_declare_all(module: str) -> None:
    mod = importlib.import_module(module)
    assert isinstance(mod.__all__, list)
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name}"


def test_import_starts_no_daemon_and_touches_no_socket() -> None:
    code = (
        "import os, socket\n"
        "calls = []\n"
        "orig = socket.socket.connect\n"
        "socket.socket.connect = lambda self, *a: calls.append(a) or orig(self, *a)\n"
        "import vineyard\n"
        "assert not calls, calls\n"
        "assert 'VINEYARD_IPC_SOCKET' not in os.environ\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("VINEYARD_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_version_is_a_string() -> None:
    assert isinstance(vineyard.__version__, str)
    assert vineyard.__version__
