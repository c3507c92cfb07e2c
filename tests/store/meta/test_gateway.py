"""The JSON gateway codec and error mapping, without a server."""

from __future__ import annotations

import pytest

from vineyard.errors import EtcdErrorException
from vineyard.store.meta import LeaseExpired, RevisionCompacted, prefix_end
from vineyard.store.meta.gateway import EtcdGateway, b64, parse_endpoints, unb64


def test_endpoints_are_normalized_and_checked():
    assert parse_endpoints("http://h1:2379, h2:2379,,https://h3:1/") == [
        "http://h1:2379",
        "http://h2:2379",
        "https://h3:1",
    ]
    assert parse_endpoints(["http://a:1"]) == ["http://a:1"]
    for bad in ("", " , ", "ftp://h:1", "http://h:1/v3"):
        with pytest.raises(ValueError, match="endpoint"):
            parse_endpoints(bad)


def test_base64_round_trip_and_omitted_fields():
    assert unb64(b64("/data/o1")) == b"/data/o1"
    assert unb64(b64(b"\x00\xff")) == b"\x00\xff"
    assert unb64(None) == b""  # the gateway omits an empty value


@pytest.mark.parametrize(
    ("prefix", "end"),
    [(b"a", b"b"), (b"/data/", b"/data0"), (b"a\xff", b"b"), (b"\xff\xff", b""), (b"", b"")],
)
def test_prefix_end(prefix, end):
    assert prefix_end(prefix) == end


def test_error_replies_map_to_specific_exceptions():
    lease = EtcdGateway.error("put '/k'", "http://h:1", "etcdserver: requested lease not found", 5)
    assert isinstance(lease, LeaseExpired)
    compacted = EtcdGateway.error("range", "http://h:1", "etcdserver: mvcc: required revision has been compacted", 11)
    assert isinstance(compacted, RevisionCompacted)
    other = EtcdGateway.error("txn", "http://h:1", "etcdserver: duplicate key given in txn request", 3)
    assert type(other) is EtcdErrorException
    assert str(other) == "Etcd error: txn on http://h:1: etcdserver: duplicate key given in txn request (grpc code 3)"
