"""Global tensors: ``make_global_tensor`` metadata, persistence and reachable members."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vineyard.data.tensor import make_global_tensor
from vineyard.meta import Object


@pytest.fixture
def blocks(any_client):
    return [any_client.put(np.arange(4, dtype=np.float64) + 4 * i) for i in range(3)]


def test_meta_keys(any_client, blocks):
    meta = make_global_tensor(any_client, blocks, shape=[12], partition_shape=[3])
    assert meta.typename == "vineyard::GlobalTensor"
    assert meta.isglobal
    assert meta["global"] is True
    assert meta["partitions_-size"] == 3
    assert json.loads(meta["shape_"]) == [12]
    assert json.loads(meta["partition_shape_"]) == [3]
    for i, block in enumerate(blocks):
        member = meta[f"partitions_-{i}"]
        assert member.id == block
        assert member.typename == "vineyard::Tensor<double>"


def test_defaults(any_client, blocks):
    meta = make_global_tensor(any_client, blocks)
    assert json.loads(meta["shape_"]) == []
    assert json.loads(meta["partition_shape_"]) == []


def test_persisted_with_its_members(any_client, blocks):
    meta = make_global_tensor(any_client, blocks)
    assert not meta.transient
    fetched = any_client.get_meta(meta.id)
    assert not fetched.transient
    for block in blocks:
        assert not any_client.get_meta(block).transient


def test_members_are_reachable(any_client, blocks):
    meta = make_global_tensor(any_client, blocks)
    obj = any_client.get_object(meta.id)
    assert obj.typename == "vineyard::GlobalTensor"
    parts = []
    for i in range(obj.meta["partitions_-size"]):
        member = obj.member(f"partitions_-{i}")
        assert isinstance(member, Object)
        parts.append(any_client.get(member.id))
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(12, dtype=np.float64))


def test_get_returns_the_raw_object(any_client, blocks):
    # as upstream, no built-in resolver: adapters (dask, torch...) assemble global tensors
    result = any_client.get(make_global_tensor(any_client, blocks).id)
    assert isinstance(result, Object)
    assert result.typename == "vineyard::GlobalTensor"


def test_blocks_may_be_metas_objects_ints_or_strings(any_client, blocks):
    mixed = [any_client.get_meta(blocks[0]), any_client.get_object(blocks[1]), int(blocks[2]), repr(blocks[0])]
    meta = make_global_tensor(any_client, mixed)
    assert meta["partitions_-size"] == 4
    assert [meta[f"partitions_-{i}"].id for i in range(4)] == [blocks[0], blocks[1], blocks[2], blocks[0]]


def test_extra_meta(any_client, blocks):
    meta = make_global_tensor(any_client, blocks, extra_meta={"owner": "test", "version": 3, "ratio": 0.1 + 0.2})
    fetched = any_client.get_meta(meta.id)
    assert fetched["owner"] == "test"
    assert fetched["version"] == 3
    assert fetched["ratio"] == 0.1 + 0.2


def test_empty_global_tensor(any_client):
    meta = make_global_tensor(any_client, [])
    assert meta["partitions_-size"] == 0
    assert meta.isglobal


def test_named_global_tensor(any_client, blocks):
    meta = make_global_tensor(any_client, blocks)
    any_client.put_name(meta.id, "test-global-tensor")
    try:
        assert any_client.get_name("test-global-tensor") == meta.id
    finally:
        any_client.drop_name("test-global-tensor")


def test_bad_block_is_a_type_error(any_client, blocks):
    with pytest.raises(TypeError, match="block"):
        make_global_tensor(any_client, [blocks[0], 1.5])
    with pytest.raises(TypeError, match="shape"):
        make_global_tensor(any_client, blocks, shape="big")

