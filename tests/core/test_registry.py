"""Builder and resolver registries: dispatch, calling conventions, lazy loading, plugins,
and a user-defined type written exactly as an upstream user would write it."""

from __future__ import annotations

import importlib.metadata
import logging
import sys
import types

import numpy as np
import pytest

import vineyard
from vineyard import ObjectMeta
from vineyard.core import (
    BuilderContext,
    ResolverContext,
    context,
    default_builder_context,
    default_resolver_context,
)
from vineyard.data import _load_entry_points, register_builtin_types
from vineyard.data.base import build_int
from vineyard.data.pickle import build_pickle
from vineyard.errors import UnknownTypeError
from vineyard.meta import Blob, Object

# -- BuilderContext -------------------------------------------------------------------------


class Base:
    pass


class Child(Base):
    pass


class GrandChild(Child):
    pass


class Mixin:
    pass


class Diamond(Mixin, Child):
    pass


def tag(name):
    def builder(*args, **kw):
        return name

    builder.__name__ = f"build_{name}"
    return builder


def test_lookup_walks_the_mro():
    ctx = BuilderContext()
    ctx.register(Base, tag("base"))
    assert ctx.run(None, Base()) == "base"
    assert ctx.run(None, GrandChild()) == "base"  # a subclass uses its parent's builder


def test_more_specific_registration_wins():
    ctx = BuilderContext()
    ctx.register(Base, tag("base"))
    ctx.register(Child, tag("child"))
    assert ctx.run(None, Base()) == "base"
    assert ctx.run(None, Child()) == "child"
    assert ctx.run(None, GrandChild()) == "child"


def test_mro_order_with_multiple_inheritance():
    ctx = BuilderContext()
    ctx.register(Base, tag("base"))
    ctx.register(Mixin, tag("mixin"))
    assert ctx.run(None, Diamond()) == "mixin"  # Mixin precedes Base in Diamond.__mro__
    ctx.register(Child, tag("child"))
    assert ctx.run(None, Diamond()) == "mixin"
    ctx.register(Diamond, tag("diamond"))
    assert ctx.run(None, Diamond()) == "diamond"


def test_register_replaces_and_unregister_forgets():
    ctx = BuilderContext()
    ctx.register(Base, tag("one"))
    ctx.register(Base, tag("two"))
    assert ctx.run(None, Base()) == "two"
    ctx.unregister(Base)
    assert Base not in ctx
    ctx.unregister(Base)  # no error the second time


def test_builder_keyword_only_for_builders_that_declare_it():
    seen = {}

    def plain(client, value):
        seen["plain"] = True
        return "plain"

    def named(client, value, builder):
        seen["named"] = builder
        return "named"

    def kwargs(client, value, **kw):
        seen["kwargs"] = kw
        return "kwargs"

    ctx = BuilderContext()
    ctx.register(int, plain)
    ctx.register(str, named)
    ctx.register(float, kwargs)
    assert ctx.run(None, 1) == "plain"  # would raise TypeError if builder= were passed
    assert ctx.run(None, "s") == "named"
    assert seen["named"] is ctx
    assert ctx.run(None, 1.0, extra=5) == "kwargs"
    assert seen["kwargs"] == {"builder": ctx, "extra": 5}


def test_builder_keyword_is_not_overridden():
    other = BuilderContext()
    got = {}
    ctx = BuilderContext()
    ctx.register(int, lambda client, value, builder: got.setdefault("b", builder))
    ctx.run(None, 1, builder=other)
    assert got["b"] is other


def test_unknown_type_without_fallback():
    ctx = BuilderContext()
    ctx.register(int, tag("int"))
    with pytest.raises(UnknownTypeError, match=r"test_registry\.Base.*no pickle fallback"):
        ctx.run(None, Base())
    assert ctx.lookup(Base) is None


def test_fallback_is_the_object_entry():
    ctx = BuilderContext()
    ctx.register(object, tag("fallback"))
    assert ctx.run(None, Base()) == "fallback"
    assert ctx.lookup(dict) is ctx.factory[object]


def test_bad_registrations():
    ctx = BuilderContext()
    with pytest.raises(TypeError, match="callable"):
        ctx.register(int, "not a function")
    with pytest.raises(TypeError, match="type"):
        ctx.register("int", tag("x"))
    rctx = ResolverContext()
    with pytest.raises(TypeError, match="callable"):
        rctx.register("vineyard::X", 42)
    with pytest.raises(TypeError, match="prefix"):
        rctx.register(int, tag("x"))


def test_factory_is_read_only():
    ctx = BuilderContext()
    ctx.register(int, tag("int"))
    with pytest.raises(TypeError):
        ctx.factory[str] = tag("str")
    assert dict(ctx.factory) == {int: ctx.factory[int]}


def test_extend_copies():
    parent = BuilderContext()
    parent.register(int, tag("parent"))
    child = parent.extend({str: tag("child-str")})
    child.register(int, tag("child-int"))
    assert parent.run(None, 1) == "parent"
    assert child.run(None, 1) == "child-int"
    assert str not in parent
    assert child.run(None, "x") == "child-str"


# -- lazy registration ---------------------------------------------------------------------


@pytest.fixture
def fake_plugin(monkeypatch):
    """A module ``fakelib`` defining a type, and ``fakelib_vineyard`` registering it."""
    lib = types.ModuleType("fakelib")
    thing = type("Thing", (), {"__module__": "fakelib"})
    lib.Thing = thing
    plugin = types.ModuleType("fakelib_vineyard")
    plugin.calls = []

    def register(builders, resolvers):
        plugin.calls.append((builders, resolvers))
        if builders is not None:
            builders.register(thing, tag("thing"))
        if resolvers is not None:
            resolvers.register("fake::Thing", lambda obj: "resolved thing")

    plugin.register = register
    monkeypatch.setitem(sys.modules, "fakelib", lib)
    monkeypatch.setitem(sys.modules, "fakelib_vineyard", plugin)
    return types.SimpleNamespace(Thing=thing, plugin=plugin)


def test_lazy_builder_loads_on_first_use(fake_plugin):
    ctx = BuilderContext()
    ctx.register(object, tag("pickle"))
    ctx.register_lazy("fakelib", "fakelib_vineyard:register")
    ctx.register_lazy("fakelib", "fakelib_vineyard:register")  # registered once
    assert fake_plugin.Thing not in ctx
    assert ctx.run(None, Base()) == "pickle"  # other types do not trigger it
    assert fake_plugin.plugin.calls == []
    assert ctx.run(None, fake_plugin.Thing()) == "thing"  # not the pickle fallback
    assert fake_plugin.plugin.calls == [(ctx, None)]
    assert ctx.run(None, fake_plugin.Thing()) == "thing"
    assert len(fake_plugin.plugin.calls) == 1


def test_lazy_builder_that_cannot_import_falls_back(fake_plugin):
    ctx = BuilderContext()
    ctx.register(object, tag("pickle"))
    ctx.register_lazy("fakelib", "no_such_module_for_vineyard:register")
    assert ctx.run(None, fake_plugin.Thing()) == "pickle"


def test_lazy_resolver_loads_on_first_use(fake_plugin):
    ctx = ResolverContext()
    ctx.register_lazy("fake::Thing", "fakelib_vineyard:register")
    ctx.register_lazy("fake::Thing", "fakelib_vineyard:register")
    assert ctx.lookup("other::Type") is None
    assert fake_plugin.plugin.calls == []
    assert ctx.lookup("fake::Thing<int>") is not None
    assert fake_plugin.plugin.calls == [(None, ctx)]
    ctx.lookup("fake::Thing")
    assert len(fake_plugin.plugin.calls) == 1


def test_lazy_registration_is_inherited_but_loaded_per_context(fake_plugin):
    parent = BuilderContext()
    parent.register_lazy("fakelib", "fakelib_vineyard:register")
    child = parent.extend()
    assert child.run(None, fake_plugin.Thing()) == "thing"
    assert fake_plugin.Thing not in parent


# -- ResolverContext ------------------------------------------------------------------------


def test_longest_prefix_wins():
    ctx = ResolverContext()
    ctx.register("vineyard::", tag("any"))
    ctx.register("vineyard::Tensor", tag("tensor"))
    ctx.register("vineyard::Tensor<int>", tag("int-tensor"))
    ctx.register("vineyard::Table", tag("table"))
    assert ctx.lookup("vineyard::Tensor<int>")(None) == "int-tensor"
    assert ctx.lookup("vineyard::Tensor<int64>")(None) == "tensor"  # "<int>" is no prefix of it
    assert ctx.lookup("vineyard::Tensor<double>")(None) == "tensor"
    assert ctx.lookup("vineyard::TableX")(None) == "table"
    assert ctx.lookup("vineyard::Blob")(None) == "any"
    assert ctx.lookup("other::Tensor") is None
    assert ctx.lookup("vineyard:") is None


def test_empty_prefix_catches_everything():
    ctx = ResolverContext()
    ctx.register("", tag("all"))
    ctx.register("b", tag("b"))
    assert ctx.lookup("anything")(None) == "all"
    assert ctx.lookup("bee")(None) == "b"


def test_resolver_unregister_and_extend():
    parent = ResolverContext()
    parent.register("x::A", tag("a"))
    child = parent.extend({"x::B": tag("b")})
    child.unregister("x::A")
    assert parent.lookup("x::A") is not None
    assert child.lookup("x::A") is None
    assert child.lookup("x::B") is not None
    assert "x::B" not in parent.factory


class FakeObject:
    def __init__(self, typename):
        self.meta = types.SimpleNamespace(typename=typename)


def test_calling_conventions_without_a_store():
    calls = {}

    def plain(obj):
        calls["plain"] = obj
        return "plain"

    def with_resolver(obj, resolver):
        calls["with_resolver"] = resolver
        return "with_resolver"

    def with_kwargs(obj, **kw):
        calls["with_kwargs"] = kw
        return "with_kwargs"

    ctx = ResolverContext()
    ctx.register("t::plain", plain)
    ctx.register("t::resolver", with_resolver)
    ctx.register("t::kwargs", with_kwargs)
    assert ctx.run(FakeObject("t::plain"), dropped=1) == "plain"
    assert ctx.run(FakeObject("t::resolver"), dropped=1) == "with_resolver"
    assert calls["with_resolver"] is ctx
    assert ctx.run(FakeObject("t::kwargs"), __vineyard_client="c", kept=2) == "with_kwargs"
    assert calls["with_kwargs"] == {"resolver": ctx, "kept": 2}  # the client key is popped
    unknown = FakeObject("t::unknown")
    assert ctx.run(unknown) is unknown


def test_get_kwargs_reach_a_kwargs_resolver(any_client):
    received = {}

    def resolver(obj, **kw):
        received.update(kw)
        return ("resolved", obj.meta["value_"])

    with context(resolvers={"vineyard::Scalar<int>": resolver}) as (_, resolvers):
        assert any_client.get(any_client.put(7), scale=3, mode="x") == ("resolved", 7)
    assert received == {"resolver": resolvers, "scale": 3, "mode": "x"}


def test_get_kwargs_are_dropped_for_other_resolvers(any_client):
    with context(resolvers={"vineyard::Scalar<int>": lambda obj: obj.meta["value_"] * 2}):
        assert any_client.get(any_client.put(21), ignored=True) == 42


def test_get_kwargs_reach_nested_elements(any_client):
    seen = []

    def resolver(obj, **kw):
        seen.append(kw.get("flag"))
        return obj.meta["value_"]

    with context(resolvers={"vineyard::Scalar<int>": resolver}):
        assert any_client.get(any_client.put((1, 2)), flag="on") == (1, 2)
    assert seen == ["on", "on"]


def test_resolver_returning_none(any_client):
    with context(resolvers={"vineyard::Scalar": lambda obj: None}):
        assert any_client.get(any_client.put(5)) is None


def test_blob_resolver_returning_none_gives_the_blob(client):
    object_id = client.put(b"some bytes")
    with context(resolvers={"vineyard::Blob": lambda obj: None}):
        result = client.get(object_id)
    assert isinstance(result, Blob)
    assert bytes(result) == b"some bytes"


def test_resolver_exceptions_propagate(any_client):
    def broken(obj, **kw):
        raise LookupError("boom")

    with context(resolvers={"vineyard::Scalar": broken}), pytest.raises(LookupError, match="boom"):
        any_client.get(any_client.put(1))


def test_unresolvable_typename_gives_the_raw_object(any_client):
    meta = ObjectMeta()
    meta["typename"] = "my::Unknown"
    meta["payload"] = "x"
    created = any_client.create_metadata(meta)
    result = any_client.get(created.id)
    assert isinstance(result, Object)
    assert result.meta["payload"] == "x"


def test_explicit_resolver_argument(any_client):
    object_id = any_client.put(3)
    assert any_client.get(object_id, resolver=lambda obj, **kw: (obj.meta["value_"], kw)) == (3, {})


# -- put(builder=...), persist, name -----------------------------------------------------


def test_put_with_explicit_builder_returns_its_result_unchanged(any_client):
    result = any_client.put(5, builder=lambda client, value, **kw: ("custom", value, kw), extra=1)
    assert result == ("custom", 5, {"extra": 1})


def test_put_name_needs_persist(any_client):
    with pytest.warns(UserWarning, match="not persisted"):
        any_client.put(1, name="test-registry-unpersisted")
    object_id = any_client.put(2, persist=True, name="test-registry-persisted")
    try:
        assert any_client.get_name("test-registry-persisted") == object_id
        assert not any_client.get_meta(object_id).transient
    finally:
        any_client.drop_name("test-registry-persisted")


# -- builtin registration and plugins ---------------------------------------------------------


def test_register_builtin_types_is_idempotent(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [])
    once_b, once_r = BuilderContext(), ResolverContext()
    register_builtin_types(once_b, once_r)
    twice_b, twice_r = BuilderContext(), ResolverContext()
    register_builtin_types(twice_b, twice_r)
    register_builtin_types(twice_b, twice_r)
    assert dict(once_b.factory) == dict(twice_b.factory)
    assert once_b._lazy == twice_b._lazy
    assert once_r.factory == twice_r.factory
    assert once_r._lazy == twice_r._lazy
    assert once_b.lookup(int) is build_int
    assert once_b.lookup(Base) is build_pickle


def test_default_contexts_can_be_registered_again(client):
    register_builtin_types(default_builder_context, default_resolver_context)
    assert client.get(client.put((1, "a", 2.5))) == (1, "a", 2.5)


def _entry_point(name, value):
    return importlib.metadata.EntryPoint(name=name, value=value, group="vineyard.types")


def test_entry_points_are_loaded(monkeypatch, fake_plugin):
    requested = []

    def entry_points(group=None):
        requested.append(group)
        return [_entry_point("fake", "fakelib_vineyard:register")]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    builders, resolvers = BuilderContext(), ResolverContext()
    _load_entry_points(builders, resolvers)
    assert requested == ["vineyard.types"]
    assert fake_plugin.plugin.calls == [(builders, resolvers)]
    assert builders.run(None, fake_plugin.Thing()) == "thing"


def test_broken_plugin_is_logged_and_skipped(monkeypatch, fake_plugin, caplog):
    def failing(builders, resolvers):
        raise RuntimeError("plugin bug")

    fake_plugin.plugin.failing = failing
    monkeypatch.setattr(
        importlib.metadata,
        "entry_points",
        lambda group=None: [
            _entry_point("missing", "no_such_vineyard_plugin:register"),
            _entry_point("raises", "fakelib_vineyard:failing"),
            _entry_point("good", "fakelib_vineyard:register"),
        ],
    )
    builders, resolvers = BuilderContext(), ResolverContext()
    with caplog.at_level(logging.WARNING, logger="vineyard.data"):
        _load_entry_points(builders, resolvers)
    messages = [r.getMessage() for r in caplog.records]
    assert any("missing" in m for m in messages)
    assert any("raises" in m for m in messages)
    assert len(fake_plugin.plugin.calls) == 1  # the good plugin still loaded


def test_plugin_types_round_trip_through_a_store(monkeypatch, any_client):
    """A third-party package ships builders/resolvers through the ``vineyard.types`` group."""
    plugin = types.ModuleType("vineyard_temperature_plugin")

    class Celsius:
        __module__ = "vineyard_temperature_plugin"

        def __init__(self, degrees):
            self.degrees = degrees

    def build(client, value, **kw):
        meta = ObjectMeta()
        meta["typename"] = "plugin::Celsius"
        meta["degrees"] = value.degrees
        return meta

    def register(builders, resolvers):
        builders.register(Celsius, build)
        resolvers.register("plugin::Celsius", lambda obj: Celsius(obj.meta["degrees"]))

    plugin.Celsius, plugin.register = Celsius, register
    monkeypatch.setitem(sys.modules, plugin.__name__, plugin)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [_entry_point("celsius", f"{plugin.__name__}:register")])
    builders, resolvers = BuilderContext(), ResolverContext()
    register_builtin_types(builders, resolvers)
    with context(base_builder=builders, base_resolver=resolvers):
        object_id = any_client.put(Celsius(21.5))
        assert any_client.get_meta(object_id).typename == "plugin::Celsius"
        assert any_client.get(object_id).degrees == 21.5


# -- a user-defined type, as an upstream user writes it ---------------------------------------


class Pair:
    def __init__(self, first, second):
        self.first = first
        self.second = second


def pair_builder(client, value, builder):
    meta = ObjectMeta()
    meta["typename"] = "vineyard::test::Pair"
    meta.add_member("first_", builder.run(client, value.first))
    meta.add_member("second_", builder.run(client, value.second))
    meta["nbytes"] = 0
    return client.create_metadata(meta)


def pair_resolver(obj, resolver):
    return Pair(resolver.run(obj.member("first_")), resolver.run(obj.member("second_")))


def pair_builder_with_ids(client, value, **kw):
    # members put first, referenced by id
    meta = ObjectMeta(**kw)
    meta["typename"] = "vineyard::test::Pair"
    meta.add_member("first_", client.put(value.first))
    meta.add_member("second_", client.put(value.second))
    return client.create_metadata(meta)


@pytest.mark.parametrize("builder", [pair_builder, pair_builder_with_ids])
def test_user_defined_pair(any_client, builder):
    with context(builders={Pair: builder}, resolvers={"vineyard::test::Pair": pair_resolver}):
        value = Pair(np.arange(5, dtype=np.int16), Pair("nested", (1, 2.5)))
        object_id = any_client.put(value)
        meta = any_client.get_meta(object_id)
        assert meta.typename == "vineyard::test::Pair"
        assert meta["first_"].typename == "vineyard::Tensor<int16>"
        assert meta["second_"].typename == "vineyard::test::Pair"
        result = any_client.get(object_id)
    assert isinstance(result, Pair)
    np.testing.assert_array_equal(result.first, value.first)
    assert result.first.dtype == np.int16
    assert isinstance(result.second, Pair)
    assert result.second.first == "nested"
    assert result.second.second == (1, 2.5)
    # outside the block the type is unknown again: it is pickled and resolved by pickle
    assert vineyard.core.get_current_builders().lookup(Pair) is build_pickle
