"""pandas values: DataFrame, Series, Index, extension arrays, global dataframes.

Round trips run over IPC and RPC (``any_client``) and compare with pandas' default
strictness; zero-copy, copy-on-write and dedup need shared memory and use ``client``.
"""

from __future__ import annotations

import datetime
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import pandas as hpd

import vineyard
from vineyard.core import context
from vineyard.data.dataframe import build_dataframe, make_global_dataframe
from vineyard.errors import UnknownTypeError
from vineyard.testing import address_in_store, store_mappings

fixture_settings = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
N = 6

COLUMNS = {
    "int64": np.arange(N, dtype=np.int64),
    "int8": np.arange(N, dtype=np.int8),
    "uint32": np.arange(N, dtype=np.uint32),
    "float32": np.linspace(0, 1, N, dtype=np.float32),
    "float64_nan": np.array([1.5, np.nan, -0.0, np.inf, 2, 3]),
    "float16": np.arange(N, dtype=np.float16),
    "complex": np.arange(N) * 1j,
    "bool": np.arange(N) % 2 == 0,
    "Int64": pd.array([1, None, 3, 4, 5, None], dtype="Int64"),
    "UInt8": pd.array([1, None, 3, 4, 5, 6], dtype="UInt8"),
    "Float64": pd.array([1.5, None, 3, 4, 5, 6], dtype="Float64"),
    "boolean": pd.array([True, None, False, True, False, True], dtype="boolean"),
    "datetime": pd.date_range("2020-01-01", periods=N, freq="h"),
    "datetime_s": pd.date_range("2020-01-01", periods=N).astype("datetime64[s]"),
    "datetime_nat": pd.to_datetime(["2020-01-01", None, "2021-05-05", None, "1970-01-01", "2262-01-01"]),
    "datetime_tz": pd.date_range("2020-03-29", periods=N, freq="h", tz="Europe/Paris"),
    "datetime_utc": pd.date_range("2020-01-01", periods=N, tz="UTC"),
    "timedelta": pd.to_timedelta(np.arange(N), unit="s"),
    "categorical": pd.Categorical([*"abcab", None]),
    "categorical_ordered": pd.Categorical([3, 1, 2, 3, 1, 2], categories=[3, 2, 1], ordered=True),
    "str": pd.array(["x", None, "", "é", "long" * 10, "y"], dtype="str"),
    "string_pyarrow": pd.array(["x", None, "", "é", "z", "y"], dtype="string[pyarrow]"),
    "string_python": pd.array(["x", None, "", "é", "z", "y"], dtype="string[python]"),
    "arrow_int": pd.array([1, None, 3, 4, 5, 6], dtype=pd.ArrowDtype(pa.int64())),
    "arrow_list": pd.array([[1], None, [], [2, 3], [4], [5]], dtype=pd.ArrowDtype(pa.list_(pa.int64()))),
    "object_mixed": np.array([1, "a", None, 2.5, (1, 2), [3]], dtype=object),
    "object_str": np.array(["a", "b", "c", "d", "e", "f"], dtype=object),
    "sparse": pd.arrays.SparseArray([0, 0, 1, 0, 2, 0]),
    "sparse_float_block": pd.arrays.SparseArray([np.nan, 1.0, 2.0, np.nan, np.nan, 3.0], kind="block"),
    "period": pd.period_range("2020-01", periods=N, freq="M"),
    "interval": pd.interval_range(0, N),
}


def frame(name: str) -> pd.DataFrame:
    return pd.DataFrame({name: COLUMNS[name], "other": np.arange(N, dtype=np.int64)})


@pytest.mark.parametrize("name", sorted(COLUMNS))
def test_dataframe_column_roundtrip(any_client, name):
    value = frame(name)
    result = any_client.get(any_client.put(value))
    pd.testing.assert_frame_equal(result, value)


@pytest.mark.parametrize("name", sorted(COLUMNS))
def test_series_roundtrip(any_client, name):
    value = pd.Series(COLUMNS[name], name=name, index=pd.Index(list("abcdef"), name="letters"))
    result = any_client.get(any_client.put(value))
    pd.testing.assert_series_equal(result, value)


def test_wide_mixed_frame(any_client):
    value = pd.DataFrame(COLUMNS, index=pd.date_range("2000", periods=N, freq="D", name="when"))
    result = any_client.get(any_client.put(value))
    pd.testing.assert_frame_equal(result, value)
    assert result.index.freq == value.index.freq


INDEXES = {
    "range": pd.RangeIndex(3, 30, 4, name="r"),
    "range_default": pd.RangeIndex(5),
    "int": pd.Index([5, 1, 3], name=7),
    "uint": pd.Index(np.array([1, 2], dtype=np.uint16)),
    "float": pd.Index([1.5, np.nan, 2.0]),
    "str": pd.Index(["a", "b", None]),
    "object": pd.Index(["a", 1, None], dtype=object),
    "bool": pd.Index([True, False]),
    "datetime": pd.DatetimeIndex(["2020-01-01", "2019-05-05"]),
    "datetime_freq": pd.date_range("2020", periods=4, freq="15min"),
    "datetime_tz": pd.date_range("2020", periods=4, freq="D", tz="Asia/Tokyo", name="t"),
    "timedelta": pd.timedelta_range("1s", periods=3, freq="s"),
    "categorical": pd.CategoricalIndex(list("abca"), categories=list("cba"), ordered=True, name="c"),
    "period": pd.period_range("2020", periods=3, freq="Q"),
    "interval": pd.interval_range(0, 3),
    "Int64": pd.Index(pd.array([1, None], dtype="Int64")),
    "multi": pd.MultiIndex.from_product([[1, 2], ["a", "b"]], names=["n", None]),
    "multi_tuple_names": pd.MultiIndex.from_arrays([[1, 2], pd.date_range("2020", periods=2)], names=[("x", 1), "y"]),
    "empty": pd.Index([], dtype="float64"),
}


@pytest.mark.parametrize("name", sorted(INDEXES))
def test_index_roundtrip(any_client, name):
    value = INDEXES[name]
    result = any_client.get(any_client.put(value))
    pd.testing.assert_index_equal(result, value, exact=True)
    assert type(result) is type(value)
    assert result.names == value.names
    assert getattr(result, "freq", None) == getattr(value, "freq", None)


@pytest.mark.parametrize("name", sorted(INDEXES))
def test_index_as_frame_index(any_client, name):
    value = INDEXES[name]
    df = pd.DataFrame({"a": np.arange(len(value))}, index=value)
    pd.testing.assert_frame_equal(any_client.get(any_client.put(df)), df)


def test_range_index_stays_range(client):
    meta = client.get_meta(client.put(pd.RangeIndex(2, 10, 3, name="x")))
    assert meta.typename == "vineyard::RangeIndex"
    assert (meta["start_"], meta["stop_"], meta["step_"]) == (2, 10, 3)
    df = client.get(client.put(pd.DataFrame({"a": [1, 2]})))
    assert isinstance(df.index, pd.RangeIndex)


@pytest.mark.parametrize(
    "columns",
    [
        [0, 1, 2],
        [("a", 1), ("a", 2), ("b", 1)],
        ["x", "x", "y"],
        [1.5, None, "mixed"],
        pd.MultiIndex.from_tuples([("a", 1), ("a", 2), ("b", 1)], names=["l0", "l1"]),
        pd.RangeIndex(3),
        pd.Index([10, 20, 30], name="cols"),
        pd.date_range("2020", periods=3),
    ],
    ids=["ints", "tuples", "duplicates", "mixed", "multiindex", "range", "named", "datetimes"],
)
def test_column_labels(any_client, columns):
    data = [np.arange(4), np.arange(4.0), pd.array(list("abcd"), dtype="str")]
    value = pd.concat([pd.Series(d) for d in data], axis=1)
    value.columns = columns
    result = any_client.get(any_client.put(value))
    pd.testing.assert_frame_equal(result, value, check_column_type=True)
    assert type(result.columns) is type(value.columns)


@pytest.mark.parametrize(
    "value",
    [
        pd.DataFrame(),
        pd.DataFrame(index=pd.RangeIndex(4)),
        pd.DataFrame({"a": pd.Series([], dtype="int64"), "s": pd.Series([], dtype="str")}),
        pd.DataFrame(columns=["a", "b"]),
        pd.DataFrame({"c": pd.Categorical([])}, index=pd.DatetimeIndex([])),
    ],
    ids=["nothing", "index_only", "no_rows", "object_columns_no_rows", "categorical_no_rows"],
)
def test_empty_frames(any_client, value):
    pd.testing.assert_frame_equal(any_client.get(any_client.put(value)), value)


MORE_FRAMES = {
    "from_2d_array": lambda: pd.DataFrame(np.arange(12.0).reshape(4, 3)),
    "str_python_nan": lambda: pd.DataFrame(
        {"s": pd.array(["a", None], dtype=pd.StringDtype("python", na_value=np.nan))}),
    "fixed_offset_tz": lambda: pd.DataFrame(
        {"t": pd.date_range("2020", periods=3, tz=datetime.timezone(datetime.timedelta(hours=1)))}),
    "dateutil_tz": lambda: pd.DataFrame({"t": pd.date_range("2020", periods=3, tz="dateutil/Europe/London")}),
    "microsecond_tz": lambda: pd.DataFrame({"t": pd.date_range("2020", periods=3, tz="UTC", unit="us")}),
    "non_unique_index": lambda: pd.DataFrame({"a": [1, 2, 3]}, index=[1.0, 1.0, np.nan]),
    "sliced": lambda: pd.DataFrame({
        "a": np.arange(100), "s": pd.array([str(i) for i in range(100)], dtype="str"),
        "c": pd.Categorical(np.arange(100) % 3), "m": pd.array(np.arange(100), dtype="Int64"),
    }).iloc[10:13],
}


@pytest.mark.parametrize("name", sorted(MORE_FRAMES))
def test_more_frames(any_client, name):
    value = MORE_FRAMES[name]()
    pd.testing.assert_frame_equal(any_client.get(any_client.put(value)), value)


def test_sliced_frame_stores_only_its_rows(client):
    value = MORE_FRAMES["sliced"]()
    meta = client.get_meta(client.put(value))
    assert meta["__values_-value-0"]["buffer_"]["length"] == 3 * 8
    strings = meta["__values_-value-1"]["values_"]["chunks_-0"]
    assert strings["buffer_data_"]["length"] == len("101112")
    assert meta["__values_-value-2"]["codes_"]["buffer_"]["length"] == 3


def test_series_name_and_nan(any_client):
    for value in (
        pd.Series([1.0, np.nan, 3.0], name="x"),
        pd.Series([1.0, np.nan], name=("t", 1)),
        pd.Series([1, 2], name=None, index=pd.RangeIndex(5, 7)),
        pd.Series([1, 2], name=3, index=pd.MultiIndex.from_tuples([(1, "a"), (2, "b")])),
        pd.Series([], dtype="str", name="empty"),
    ):
        result = any_client.get(any_client.put(value))
        pd.testing.assert_series_equal(result, value)
        assert type(result.name) is type(value.name)


def test_dataframe_layout_is_upstreams(client):
    df = pd.DataFrame({"a": np.arange(4.0), "b": np.arange(4), 3: np.ones(4)})
    meta = client.get_meta(client.put(df, partition_index=[2, 5], row_batch_index=7))
    assert meta.typename == "vineyard::DataFrame"
    assert meta["columns_"] == '["a","b",3]'
    assert meta["__values_-size"] == 3
    assert [meta[f"__values_-key-{i}"] for i in range(3)] == ['"a"', '"b"', "3"]
    assert meta["__values_-value-0"].typename == "vineyard::Tensor<double>"
    assert meta["__values_-value-0"]["buffer_"]["length"] == 32
    assert meta["__values_-value-1"].typename == "vineyard::Tensor<int64>"
    assert meta["index_"].typename == "vineyard::RangeIndex"
    assert (meta["partition_index_row_"], meta["partition_index_column_"], meta["row_batch_index_"]) == (2, 5, 7)
    default = client.get_meta(client.put(df))
    assert (default["partition_index_row_"], default["partition_index_column_"]) == (-1, -1)
    assert default["row_batch_index_"] == 0
    series = client.get_meta(client.put(pd.Series([1.0], name="s")))
    assert series.typename == "vineyard::Series"
    assert series["name"] == '"s"'
    assert series["value_"].typename == "vineyard::Tensor<double>"


def test_extension_typenames(client):
    expected = {
        "categorical": "vineyard::pandas::Categorical",
        "datetime_tz": "vineyard::pandas::DatetimeTZArray",
        "Int64": "vineyard::pandas::MaskedArray<Int64>",
        "str": "vineyard::pandas::ArrowArray",
        "period": "vineyard::pandas::PeriodArray",
        "sparse": "vineyard::SparseArray<int64>",
        "interval": "vineyard::PickleBuffer",
        "datetime": "vineyard::Tensor<datetime64[us]>",  # pandas 3 infers microseconds
    }
    for name, typename in expected.items():
        meta = client.get_meta(client.put(frame(name)))
        assert meta["__values_-value-0"].typename == typename, name
    sparse = client.get_meta(client.put(pd.Series(COLUMNS["sparse"])))["value_"]
    assert sparse["value_type_"] == "int64"
    assert sparse["sp_index_name"] == "integer"
    assert sparse["sp_index_size"] == N


def test_upstream_frames_without_columns_index(client):
    df = pd.DataFrame({"a": [1, 2], "b": [3.0, 4.0]})
    meta = build_dataframe(client, df)
    meta.reset_key("columns_index_")
    created = client.create_metadata(meta)
    pd.testing.assert_frame_equal(client.get(created.id), df)


@pytest.mark.parametrize(
    ("columns", "stored"),
    [
        (pd.Index(["a", "b"]), False),  # the JSON keys say it all
        (pd.Index([1, 2]), False),
        (pd.RangeIndex(2), True),
        (pd.Index(["a", "b"], name="letters"), True),
        (pd.Index(["a", "b"], dtype=object), True),
    ],
)
def test_columns_index_is_stored_only_when_the_keys_do_not_say_it_all(client, columns, stored):
    df = pd.DataFrame([[1.0, 2.0]], columns=columns)
    meta = build_dataframe(client, df)
    assert ("columns_index_" in meta) is stored
    back = client.get(client.put(df))
    pd.testing.assert_index_equal(back.columns, df.columns, exact=True)
    assert back.columns.name == df.columns.name


def test_frames_read_back_do_not_share_their_columns_index(client):
    object_id = client.put(pd.DataFrame({"a": [1.0], "b": [2.0]}))
    first, second = client.get(object_id), client.get(object_id)
    first.columns.name = "renamed"
    assert second.columns.name is None
    assert client.get(object_id).columns.name is None


def test_extension_arrays_put_on_their_own(any_client):
    names = ["categorical", "Int64", "str", "string_python", "sparse", "datetime_tz", "period", "interval"]
    for value in (pd.array(COLUMNS[name]) for name in names):
        result = any_client.get(any_client.put(value))
        assert type(result) is type(value)
        pd.testing.assert_extension_array_equal(result, value)


def column_addresses(values):
    """Start addresses of every buffer behind one column's array."""
    if isinstance(values, np.ndarray):
        return [values.__array_interface__["data"][0]]
    if isinstance(values, pd.Categorical):
        return column_addresses(values.codes)
    if isinstance(values, (pd.arrays.DatetimeArray, pd.arrays.TimedeltaArray)):
        return column_addresses(values._ndarray)
    if isinstance(values, (pd.arrays.IntegerArray, pd.arrays.FloatingArray, pd.arrays.BooleanArray)):
        return column_addresses(values._data) + column_addresses(values._mask)
    if isinstance(values, pd.arrays.ArrowExtensionArray):
        chunked = values.__arrow_array__()
        return [b.address for chunk in chunked.chunks for b in chunk.buffers() if b is not None and b.size]
    raise AssertionError(f"no address helper for {type(values).__name__}")


ZERO_COPY = ["int64", "float64_nan", "bool", "Int64", "boolean", "Float64", "datetime", "datetime_tz",
             "timedelta", "categorical", "str", "string_pyarrow", "arrow_int", "arrow_list"]


@pytest.mark.parametrize("name", ZERO_COPY)
def test_get_is_zero_copy(client, name):
    value = pd.DataFrame({name: pd.Series(COLUMNS[name]).repeat(500).reset_index(drop=True).array})
    result = client.get(client.put(value))
    pd.testing.assert_frame_equal(result, value)
    assert result[name].dtype == value[name].dtype
    mappings = store_mappings()
    addresses = column_addresses(result[name]._values)
    assert addresses
    assert all(address_in_store(a, mappings) for a in addresses)
    series = client.get(client.put(value[name]))
    assert all(address_in_store(a, mappings) for a in column_addresses(series._values))


def test_columns_are_read_only_but_writes_copy(client):
    value = pd.DataFrame({"a": np.arange(5.0), "b": np.arange(5), "c": pd.Categorical(list("xyzxy"))})
    object_id = client.put(value)
    result = client.get(object_id)
    assert len(result._mgr.blocks) == 3  # one block per column: nothing was consolidated
    assert not result["a"].to_numpy().flags.writeable
    result.loc[0, "a"] = 100.0
    result.iloc[1, 1] = -1
    result["a"] += 1
    assert result["a"].tolist() == [101.0, 2.0, 3.0, 4.0, 5.0]
    assert result["b"].tolist() == [0, -1, 2, 3, 4]
    pd.testing.assert_frame_equal(client.get(object_id), value)  # the store is untouched
    series = client.get(client.put(value["a"]))
    series.iloc[0] = 7.0
    assert series.iloc[0] == 7.0


def test_dataframe_reusing(client):
    """Upstream's test_dataframe_reusing: a column taken from a got frame is not copied again."""
    nparr = np.ones(1000)
    df = pd.DataFrame({"x": nparr, "s": pd.array([str(i) for i in range(1000)], dtype="str"),
                       "c": pd.Categorical(np.arange(1000) % 3)})
    df_id = client.put(df)
    df = client.get(df_id)
    df2 = pd.DataFrame(df)
    df2["y"] = nparr
    df2_id = client.put(df2)
    meta = client.get_meta(df_id)
    meta2 = client.get_meta(df2_id)
    assert meta["__values_-value-0"]["buffer_"].id == meta2["__values_-value-0"]["buffer_"].id
    strings = meta["__values_-value-1"]["values_"]["chunks_-0"]
    strings2 = meta2["__values_-value-1"]["values_"]["chunks_-0"]
    assert strings["buffer_data_"].id == strings2["buffer_data_"].id
    assert strings["buffer_offsets_"].id == strings2["buffer_offsets_"].id
    assert meta["__values_-value-2"]["codes_"]["buffer_"].id == meta2["__values_-value-2"]["codes_"]["buffer_"].id
    assert meta2["__values_-value-3"]["buffer_"].id != meta["__values_-value-0"]["buffer_"].id
    pd.testing.assert_frame_equal(client.get(df2_id), df2)


def test_pickle_disabled_names_the_type(client):
    value = pd.DataFrame({"iv": pd.interval_range(0, 3)})
    with context(allow_pickle=False), pytest.raises(UnknownTypeError, match="Interval"):
        client.put(value)
    object_id = client.put(value)
    with context(allow_pickle=False), pytest.raises(UnknownTypeError):
        client.get(object_id)


def test_global_dataframe(client):
    parts = [pd.DataFrame({"a": np.arange(3) + 3 * i, "s": ["x", "y", "z"]}) for i in range(3)]
    ids = [client.put(p, partition_index=[i, 0], row_batch_index=i) for i, p in enumerate(parts)]
    meta = make_global_dataframe(client, ids, extra_meta={"origin": "test"})
    assert meta.typename == "vineyard::GlobalDataFrame"
    assert meta.isglobal
    assert not meta.transient
    assert meta["partitions_-size"] == 3
    assert (meta["partition_shape_row_"], meta["partition_shape_column_"]) == (3, 1)
    assert meta["origin"] == "test"
    assert [meta[f"partitions_-{i}"].id for i in range(3)] == ids
    frames = client.get(meta.id)
    assert isinstance(frames, list)
    assert len(frames) == 3
    for got, part in zip(frames, parts):
        pd.testing.assert_frame_equal(got, part)
    by_meta = make_global_dataframe(client, [client.get_meta(i) for i in ids])
    assert len(client.get(by_meta.id)) == 3


def test_global_dataframe_out_of_order(client):
    ids = [client.put(pd.DataFrame({"a": [i]}), row_batch_index=i) for i in range(2)]
    meta = make_global_dataframe(client, ids[::-1])
    with pytest.raises(ValueError, match="row_batch_index_"):
        client.get(meta.id)


@fixture_settings
@given(
    value=hpd.data_frames(
        columns=[
            hpd.column("i", dtype=np.int64),
            hpd.column("f", dtype=np.float64),
            hpd.column("b", dtype=bool),
            hpd.column("s", elements=st.one_of(st.none(), st.text(max_size=5)), dtype=object),
            hpd.column("n", elements=st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), dtype=object),
        ],
        index=hpd.range_indexes(max_size=30),
    )
)
def test_property_frames(client, value):
    value = value.astype({"s": "str", "n": "Int64"})
    result = client.get(client.put(value))
    pd.testing.assert_frame_equal(result, value)


@fixture_settings
@given(
    value=hpd.series(elements=st.floats(allow_nan=True, width=32), dtype=np.float32,
                     index=hpd.indexes(elements=st.text(max_size=3), dtype=object, unique=True)),
    name=st.one_of(st.none(), st.text(max_size=5), st.integers(), st.tuples(st.integers(), st.text(max_size=2))),
)
def test_property_series(client, value, name):
    value = value.rename(name)
    result = client.get(client.put(value))
    pd.testing.assert_series_equal(result, value)


def test_resolved_values_are_plain_pandas(client):
    result = client.get(client.put(pd.DataFrame({"a": np.arange(3)})))
    assert type(result) is pd.DataFrame
    assert type(result["a"].to_numpy()) is np.ndarray
    assert isinstance(vineyard.ObjectID(client.put(result)), vineyard.ObjectID)


LAZY = """
import sys
import vineyard
assert "pandas" not in sys.modules and "pyarrow" not in sys.modules, "imported eagerly"
client = vineyard.connect(sys.argv[1])
df = client.get(vineyard.ObjectID(sys.argv[2]))
table = client.get(vineyard.ObjectID(sys.argv[3]))
import pandas as pd
import pyarrow as pa
assert isinstance(df, pd.DataFrame) and df["s"].tolist() == ["x", "y"], df
assert isinstance(table, pa.Table) and table.column("a").to_pylist() == [1, 2], table
again = client.get(client.put(df))
assert again.equals(df)
client.close()
"""


def test_lazy_registration_in_a_fresh_process(client, store):
    df_id = client.put(pd.DataFrame({"s": ["x", "y"]}))
    table_id = client.put(pa.table({"a": [1, 2]}))
    proc = subprocess.Popen([sys.executable, "-c", LAZY, store.socket, repr(df_id), repr(table_id)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, err
