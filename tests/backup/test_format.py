"""The backup format's pure parts: records, values, paths, the header's checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import JSON, Float, LargeBinary, String

from kaon.server.backup.format import (
    BYTES,
    DATETIME,
    END,
    FILE,
    HEADER_BYTES,
    JSON_KIND,
    PLAIN,
    BackupRefusedError,
    Header,
    check_revision,
    check_signature,
    column_kind,
    decode_header,
    decode_rows,
    encode_header,
    encode_rows,
    parents_first,
    record,
    records,
    rehome,
    safe_path,
    sign,
)
from kaon.server.db.models import UTCDateTime


def _stream(*parts: list[bytes]) -> list[bytes]:
    joined = b"".join(b"".join(p) for p in parts)
    return [joined[i : i + 3] for i in range(0, len(joined), 3)]  # cut anywhere


def test_records_round_trip_in_any_cut() -> None:
    stream = _stream(
        list(record(FILE, {"path": "runs/a/log"}, [b"hello ", b"", b"world"])),
        list(record(FILE, {"path": "empty"}, [])),
        list(record(END, {"files": 2}, [])),
    )
    seen = [(r.kind, r.meta, b"".join(r.segments())) for r in records(stream)]
    assert seen == [
        (FILE, {"path": "runs/a/log"}, b"hello world"),
        (FILE, {"path": "empty"}, b""),
        (END, {"files": 2}, b""),
    ]


def test_a_stream_without_its_end_is_refused() -> None:
    stream = _stream(list(record(FILE, {"path": "a"}, [b"x" * 10])))
    with pytest.raises(BackupRefusedError, match="end"):
        for rec in records(stream[:-1]):
            rec.skip()


def test_values_of_every_kind_round_trip_exactly() -> None:
    kinds = [column_kind(t) for t in (LargeBinary(), UTCDateTime(), JSON(), Float(), String())]
    assert kinds == [BYTES, DATETIME, JSON_KIND, PLAIN, PLAIN]
    when = datetime(2026, 11, 30, 6, 1, 2, 345678, tzinfo=UTC)
    row = (b"\0\xff raw", when, {"a": [1, 2.5, None, "é"]}, 1 / 3, "text")
    back = decode_rows(["b", "d", "j", "f", "s"], kinds, encode_rows(kinds, [row, [None] * 5]))
    assert back[0] == dict(zip(["b", "d", "j", "f", "s"], row, strict=True))
    assert back[0]["d"].utcoffset() == timedelta(0)
    assert set(back[1].values()) == {None}


def test_a_naive_datetime_is_refused() -> None:
    with pytest.raises(BackupRefusedError, match="time zone"):
        encode_rows([DATETIME], [[datetime(2026, 1, 1)]])
    offset = datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=2)))
    assert decode_rows(["d"], [DATETIME], encode_rows([DATETIME], [[offset]]))[0]["d"] == offset


def test_paths_stay_in_the_home() -> None:
    assert safe_path("runs/j-1/0/stdout.log") == "runs/j-1/0/stdout.log"
    for bad in ("/etc/passwd", "../x", "runs/../../x", "", "a//b", "./a"):
        with pytest.raises(BackupRefusedError, match="outside the home"):
            safe_path(bad)


def test_rows_move_to_the_new_home() -> None:
    value = {"dir": "/old/home/checkpoints/j-1", "other": "/old/homework", "n": 1}
    assert rehome(value, "/old/home", "/new") == {
        "dir": "/new/checkpoints/j-1",
        "other": "/old/homework",
        "n": 1,
    }


def _header() -> Header:
    return Header(
        format=1,
        kaon_version="0.1",
        created_at="now",
        schema_revision="0008",
        source_database="sqlite",
        master_key_id="mk-1",
        wrapped_key="",
        backup_id="b1",
    )


def test_the_header_is_signed_and_checked() -> None:
    key = b"k" * 32
    signed = sign(_header(), key)
    again = decode_header(encode_header(signed))
    assert len(encode_header(signed)) == HEADER_BYTES
    check_signature(again, key)
    forged = Header(**{**again.__dict__, "schema_revision": "0001"})
    with pytest.raises(BackupRefusedError, match="altered"):
        check_signature(forged, key)


def test_what_is_not_a_backup_or_is_too_new_is_refused() -> None:
    with pytest.raises(BackupRefusedError, match="not a Kaon backup"):
        decode_header(b"PK\x03\x04 a zip file")
    with pytest.raises(BackupRefusedError, match="newer than this Kaon"):
        check_revision(_header(), ["0001", "0002"])
    check_revision(_header(), ["0007", "0008"])


def test_rows_that_name_rows_of_their_table_come_after_them() -> None:
    rows = [("a", "c"), ("b", None), ("c", "b"), ("d", "zz"), ("e", None)]
    ordered = [key for key, _ in parents_first(rows, 0, 1)]
    assert ordered.index("b") < ordered.index("c") < ordered.index("a")
    assert sorted(ordered) == ["a", "b", "c", "d", "e"]
    looped = [("x", "y"), ("y", "x")]  # a loop cannot come from the database; not stuck
    assert sorted(k for k, _ in parents_first(looped, 0, 1)) == ["x", "y"]
