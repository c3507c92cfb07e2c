"""ObjectID and ObjectName (API.md §3.1)."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vineyard import ObjectID, ObjectName, UserInputErrorException
from vineyard.ids import BLOB_BIT, EMPTY_BLOB_ID, INVALID_ID, IdGenerator, is_blob

ids = st.integers(0, (1 << 64) - 1)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "o0000000000000000"),
        (1, "o0000000000000001"),
        (0x0015C78883EDDF1C, "o0015c78883eddf1c"),
        (BLOB_BIT, "o8000000000000000"),
        ((1 << 64) - 1, "offffffffffffffff"),
    ],
)
def test_text_forms(value: int, text: str) -> None:
    oid = ObjectID(value)
    assert repr(oid) == text
    assert str(oid) == f'ObjectID <"{text}">'
    assert oid.uri == f"vineyard://{text}"
    assert f"{oid}" == text
    assert int(oid) == value


def test_constructors() -> None:
    assert int(ObjectID()) == INVALID_ID
    assert ObjectID("o0015c78883eddf1c") == ObjectID(0x0015C78883EDDF1C)
    assert ObjectID("00002ec13bc81226") == ObjectID(0x2EC13BC81226)  # upstream drops the first char
    assert ObjectID(ObjectID(7)) == ObjectID(7)
    assert ObjectID.from_uri("vineyard://o0000000000000010") == ObjectID(16)


@pytest.mark.parametrize("bad", ["", "o", "oxyz", "hello", -1, 1 << 64, "o1" + "0" * 20])
def test_bad_ids_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="object id"):
        ObjectID(bad)  # type: ignore[arg-type]


def test_from_uri_needs_the_prefix() -> None:
    with pytest.raises(UserInputErrorException, match="not a vineyard object uri"):
        ObjectID.from_uri("o0000000000000010")


@given(ids)
def test_text_roundtrip(value: int) -> None:
    oid = ObjectID(value)
    assert ObjectID(repr(oid)) == oid
    assert ObjectID.from_uri(oid.uri) == oid
    assert hash(oid) == hash(value)
    assert pickle.loads(pickle.dumps(oid)) == oid
    assert type(pickle.loads(pickle.dumps(oid))) is ObjectID
    assert oid.is_blob == bool(value >> 63) == is_blob(value)


def test_ids_work_as_dict_keys_and_in_sets() -> None:
    a, b = ObjectID(5), ObjectID("o0000000000000005")
    assert {a: 1}[b] == 1
    assert len({a, b}) == 1


def test_blob_bit() -> None:
    assert EMPTY_BLOB_ID == BLOB_BIT == 1 << 63
    assert ObjectID(EMPTY_BLOB_ID).is_blob
    assert not ObjectID(5).is_blob


def test_generator_layout_and_uniqueness() -> None:
    gen = IdGenerator(instance_id=3)
    made = [gen.object_id() for _ in range(10_000)]  # far more than 4096 per millisecond
    assert len(set(made)) == len(made)
    assert made == sorted(made)
    assert all(not is_blob(i) for i in made)
    assert all((i >> 12) & 0x3FF == 3 for i in made[:10])
    blobs = [gen.blob_id() for _ in range(100)]
    assert all(is_blob(b) for b in blobs)
    assert not is_blob(gen.signature())


def test_object_name() -> None:
    name = ObjectName("my-data")
    assert str(name) == "my-data"
    assert repr(name) == "'my-data'"
    assert name == "my-data"
    assert hash(name) == hash("my-data")
    assert name.uri == "vineyard://my-data"
    assert ObjectName.from_uri("vineyard://my-data") == name
    back = pickle.loads(pickle.dumps(name))
    assert back == name
    assert type(back) is ObjectName
    with pytest.raises(UserInputErrorException):
        ObjectName.from_uri("my-data")
