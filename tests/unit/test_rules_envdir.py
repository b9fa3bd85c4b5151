"""Tests for the envdir reader (s6tls.rules.envdir)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s6tls.rules import RulesError, read_envdir
from s6tls.rules.envdir import VALUE_MAX, parse_value


def envdir(tmp_path: Path, files: dict[str, bytes]) -> str:
    directory = tmp_path / "env"
    directory.mkdir()
    for name, content in files.items():
        (directory / name).write_bytes(content)
    return str(directory)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"bar\n", "bar"),
        (b"bar", "bar"),
        (b"first\nsecond\n", "first"),
        (b"", None),  # an empty file unsets
        (b"\n", ""),  # an empty first line sets the empty string
        (b"a b \t \r\nnext", "a b"),
        (b"a\0b\n", "a\nb"),
        (b"a\0 \n", "a\n"),  # spaces stripped first, then NUL becomes newline
        (b"a \t\r\0b \n", "a \t\r\nb"),
        (b"  lead", "  lead"),
        (b" \t\n", ""),
        (b"\xff\n", "\udcff"),
    ],
)
def test_values(content: bytes, expected: str | None) -> None:
    assert parse_value(content) == expected


def test_directory(tmp_path: Path) -> None:
    path = envdir(
        tmp_path,
        {
            "ZED": b"z\n",
            "FOO": b"bar\n",
            "EMPTY": b"",
            ".hidden": b"x\n",
            "A=B": b"x\n",
            "lower": b"l\n",
        },
    )
    assert read_envdir(path) == (("EMPTY", None), ("FOO", "bar"), ("ZED", "z"), ("lower", "l"))


def test_dot_directory_skipped(tmp_path: Path) -> None:
    path = envdir(tmp_path, {"A": b"1"})
    os.mkdir(f"{path}/.cache")
    assert read_envdir(path) == (("A", "1"),)


def test_only_the_first_4095_bytes_are_read(tmp_path: Path) -> None:
    path = envdir(tmp_path, {"LONG": b"x" * 5000, "EDGE": b"y" * VALUE_MAX + b"\n"})
    assert read_envdir(path) == (("EDGE", "y" * VALUE_MAX), ("LONG", "x" * VALUE_MAX))


def test_symlink_to_file_is_followed(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"linked\n")
    path = envdir(tmp_path, {})
    os.symlink(target, f"{path}/L")
    assert read_envdir(path) == (("L", "linked"),)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="nope"):
        read_envdir(str(tmp_path / "nope"))
    assert read_envdir(str(tmp_path / "nope"), missing_ok=True) == ()


def test_not_a_directory(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_bytes(b"")
    with pytest.raises(RulesError, match="Not a directory"):
        read_envdir(str(file), missing_ok=True)


def test_subdirectory_is_an_error(tmp_path: Path) -> None:
    # skalibs' envdir fails with EISDIR, as s6-accessrules-cdb-from-fs shows.
    path = envdir(tmp_path, {"A": b"1"})
    os.mkdir(f"{path}/SUB")
    with pytest.raises(RulesError, match="SUB: Is a directory"):
        read_envdir(path)


def test_dangling_symlink_is_an_error(tmp_path: Path) -> None:
    path = envdir(tmp_path, {})
    os.symlink(tmp_path / "absent", f"{path}/GONE")
    with pytest.raises(RulesError, match="GONE"):
        read_envdir(path)


@pytest.mark.timeout(10)
def test_fifo_is_an_error_not_a_hang(tmp_path: Path) -> None:
    path = envdir(tmp_path, {})
    os.mkfifo(f"{path}/FIFO")
    with pytest.raises(RulesError, match="FIFO"):
        read_envdir(path)


@settings(max_examples=500, deadline=None, database=None)
@given(st.binary(max_size=200))
def test_value_is_first_line_stripped(content: bytes) -> None:
    value = parse_value(content)
    if not content:
        assert value is None
        return
    assert value is not None
    raw = os.fsencode(value)
    assert b"\0" not in raw
    assert not raw.endswith((b" ", b"\t", b"\r"))
    assert content.startswith(raw.replace(b"\n", b"\0"))
