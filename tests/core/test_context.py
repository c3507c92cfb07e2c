"""Scoped builder/resolver contexts: nesting, restoring on exit, threads and asyncio tasks."""

from __future__ import annotations

import asyncio
import threading

import pytest

import vineyard
from vineyard.core import (
    BuilderContext,
    ResolverContext,
    builder_context,
    context,
    default_builder_context,
    default_resolver_context,
    get_current_builders,
    get_current_resolvers,
    resolver_context,
)


class Marker:
    pass


def build_marker(client, value, **kw):
    meta = vineyard.ObjectMeta()
    meta["typename"] = "test::Marker"
    return meta


def test_defaults_outside_any_block():
    assert get_current_builders() is default_builder_context
    assert get_current_resolvers() is default_resolver_context


def test_builder_context_nests_and_restores():
    outer_before = get_current_builders()
    with builder_context({Marker: build_marker}) as outer:
        assert get_current_builders() is outer
        assert Marker in outer
        with builder_context() as inner:
            assert get_current_builders() is inner
            assert Marker in inner  # extends the current context
            inner.register(int, build_marker)
        assert get_current_builders() is outer
        assert outer.lookup(int) is not build_marker  # registrations inside stay inside
    assert get_current_builders() is outer_before
    assert Marker not in default_builder_context


def test_resolver_context_nests_and_restores():
    with resolver_context({"test::": lambda obj: 1}) as outer:
        assert get_current_resolvers() is outer
        with resolver_context({"test::Marker": lambda obj: 2}) as inner:
            assert get_current_resolvers() is inner
            assert inner.lookup("test::Marker")(None) == 2
            assert inner.lookup("test::Other")(None) == 1
        assert outer.lookup("test::Marker")(None) == 1
    assert get_current_resolvers() is default_resolver_context
    assert default_resolver_context.lookup("test::Marker") is None


def test_restored_after_an_exception():
    with pytest.raises(RuntimeError, match="inside"), builder_context(), resolver_context():
        raise RuntimeError("inside")
    assert get_current_builders() is default_builder_context
    assert get_current_resolvers() is default_resolver_context
    with pytest.raises(RuntimeError, match="inside"), context():
        raise RuntimeError("inside")
    assert get_current_builders() is default_builder_context


def test_combined_context_yields_both():
    with context({Marker: build_marker}, {"test::Marker": lambda obj: "m"}) as (builders, resolvers):
        assert isinstance(builders, BuilderContext)
        assert isinstance(resolvers, ResolverContext)
        assert get_current_builders() is builders
        assert get_current_resolvers() is resolvers
        assert Marker in builders
        assert resolvers.lookup("test::Marker") is not None
    assert get_current_builders() is default_builder_context
    assert get_current_resolvers() is default_resolver_context


def test_explicit_base_is_extended_instead_of_the_current_one():
    base = BuilderContext()
    base.register(Marker, build_marker)
    rbase = ResolverContext()
    with builder_context({int: build_marker}), context(base_builder=base, base_resolver=rbase) as (b, r):
        assert Marker in b
        assert int not in b  # the outer block's registration is not inherited
        assert r.factory == {}
    with builder_context(base=base) as b:
        assert Marker in b
        assert b is not base


def test_contexts_do_not_leak_into_other_threads():
    seen = {}
    ready, release = threading.Event(), threading.Event()

    def other():
        seen["start"] = (get_current_builders(), get_current_resolvers())
        with builder_context() as mine:
            seen["mine"] = mine
            ready.set()
            release.wait(10)
            seen["still_mine"] = get_current_builders()

    with context() as (builders, _):
        thread = threading.Thread(target=other)
        thread.start()
        assert ready.wait(10)
        # the other thread's block does not replace ours, nor ours its
        assert get_current_builders() is builders
        release.set()
        thread.join(10)
        assert not thread.is_alive()
        assert get_current_builders() is builders
    assert seen["start"] == (default_builder_context, default_resolver_context)
    assert seen["still_mine"] is seen["mine"]
    assert get_current_builders() is default_builder_context


def test_many_threads_each_with_their_own_override(store):
    results = {}
    errors = []
    barrier = threading.Barrier(4)

    def worker(n):
        try:
            with vineyard.connect(store.socket) as client, context(
                resolvers={"vineyard::Scalar<int>": lambda obj, n=n: ("thread", n, obj.meta["value_"])}
            ):
                object_id = client.put(n)
                barrier.wait(10)  # all four blocks are active at once
                results[n] = client.get(object_id)
        except Exception as exc:  # reported below: an assert in a thread would be lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert results == {n: ("thread", n, n) for n in range(4)}


def test_asyncio_tasks_have_their_own_context():
    async def task(name, started, proceed):
        with builder_context() as mine:
            started.set()
            await proceed.wait()
            return name, get_current_builders() is mine

    async def main():
        started = [asyncio.Event(), asyncio.Event()]
        proceed = asyncio.Event()
        tasks = [asyncio.create_task(task(i, started[i], proceed)) for i in range(2)]
        for event in started:
            await event.wait()
        outside = get_current_builders()
        proceed.set()
        return outside, await asyncio.gather(*tasks)

    outside, results = asyncio.run(main())
    assert outside is default_builder_context
    assert results == [(0, True), (1, True)]


def test_override_applies_to_put_and_get(any_client):
    with context({Marker: build_marker}, {"test::Marker": lambda obj: "a marker"}):
        object_id = any_client.put(Marker())
        assert any_client.get(object_id) == "a marker"
    assert any_client.get_meta(object_id).typename == "test::Marker"
    # outside the block no resolver knows the typename: the raw object comes back
    assert isinstance(any_client.get(object_id), vineyard.Object)
