"""s6-accessrules-cdb-from-fs and s6-accessrules-fs-from-cdb through the real command line,
against skarnet's own tools where they are installed."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import cdbx
import pytest

from s6tls.rules import DirRules, Rule, decode
from s6tls.rules.cdbfile import CdbRules, write_cdb
from s6tls.rules.keys import TLS_FAMILIES
from s6tls.rules.tlskeys import alpn_keys, cert_keys, sni_keys
from tests.support import der
from tests.support.trees import write_files

BIN = Path(sys.executable).parent
SKARNET_CDB_FROM_FS = "/usr/bin/s6-accessrules-cdb-from-fs"
SKARNET_FS_FROM_CDB = "/usr/bin/s6-accessrules-fs-from-cdb"
needs_skarnet = pytest.mark.skipif(
    not (os.path.exists(SKARNET_CDB_FROM_FS) and os.path.exists(SKARNET_FS_FROM_CDB)),
    reason="skarnet's s6 tools are not installed",
)


def ours(name: str) -> str:
    found = shutil.which(name, path=str(BIN))
    assert found is not None, f"{name} is not installed next to {sys.executable}"
    return found


CDB_FROM_FS = ours("s6-accessrules-cdb-from-fs")
FS_FROM_CDB = ours("s6-accessrules-fs-from-cdb")

# The REFERENCE E08 trees (rules, and rules2's reversedns rule) in one.
E08_TREE = {
    "ip4/127.0.0.1_32/allow": b"",
    "ip4/127.0.0.1_32/env/FOO": b"bar\n",
    "ip4/127.0.0.1_32/env/EMPTY": b"",
    "ip4/127.0.0.1_32/env/TWOLINES": b"first\nsecond\n",
    "ip4/127.0.0.2_32/deny": b"",
    "ip4/127.0.0.4_32/allow": b"",
    "ip4/127.0.0.4_32/exec": b"test/envdump\n",
    "reversedns/localhost/allow": b"",
    "reversedns/localhost/env/VIA": b"rdns\n",
}
# What a decompiler writes back: only the first line of each env value.
E08_DECOMPILED = {**E08_TREE, "ip4/127.0.0.1_32/env/TWOLINES": b"first\n"}
E08_RULES = {
    "ip4/127.0.0.1_32": Rule(
        allow=True, env=(("EMPTY", None), ("FOO", "bar"), ("TWOLINES", "first"))
    ),
    "ip4/127.0.0.2_32": Rule(allow=False),
    "ip4/127.0.0.4_32": Rule(allow=True, exec="test/envdump\n"),
    "reversedns/localhost": Rule(allow=True, env=(("VIA", "rdns"),)),
}


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd, timeout=60)


def tree_of(root: Path) -> dict[str, bytes]:
    """Every regular file under root with its content; directories only as paths."""
    found: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            found[str(path.relative_to(root))] = path.read_bytes()
    return found


def records(path: Path) -> dict[bytes, bytes]:
    return dict(cdbx.CDB(str(path)).items(all=True))


def normalised(rule: Rule) -> Rule:
    """The rule with its env in name order, since each compiler keeps its own order."""
    return Rule(allow=rule.allow, env=tuple(sorted(rule.env)), exec=rule.exec)


@pytest.fixture
def e08(tmp_path: Path) -> Path:
    return write_files(tmp_path / "rules", E08_TREE)


def test_compile_and_decompile_e08(tmp_path: Path, e08: Path) -> None:
    cdb = tmp_path / "rules.cdb"
    done = run(CDB_FROM_FS, str(cdb), str(e08))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert stat.S_IMODE(cdb.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["rules", "rules.cdb"]
    assert {k.decode(): decode(v) for k, v in records(cdb).items()} == E08_RULES
    done = run(FS_FROM_CDB, str(tmp_path / "rt"), str(cdb))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert tree_of(tmp_path / "rt") == E08_DECOMPILED


@needs_skarnet
def test_skarnet_compiled_is_decompiled_by_ours(tmp_path: Path, e08: Path) -> None:
    cdb = tmp_path / "rules.cdb"
    assert run(SKARNET_CDB_FROM_FS, str(cdb), str(e08)).returncode == 0
    rules = CdbRules(str(cdb))
    for key, rule in E08_RULES.items():
        found = rules.get(key)
        assert found is not None
        assert normalised(found) == rule
    done = run(FS_FROM_CDB, str(tmp_path / "rt"), str(cdb))
    assert (done.returncode, done.stderr) == (0, "")
    assert tree_of(tmp_path / "rt") == E08_DECOMPILED


@needs_skarnet
def test_ours_compiled_is_decompiled_by_skarnet(tmp_path: Path, e08: Path) -> None:
    cdb = tmp_path / "rules.cdb"
    assert run(CDB_FROM_FS, str(cdb), str(e08)).returncode == 0
    done = run(SKARNET_FS_FROM_CDB, str(tmp_path / "rt"), str(cdb))
    assert (done.returncode, done.stderr) == (0, "")
    assert tree_of(tmp_path / "rt") == E08_DECOMPILED


@needs_skarnet
def test_both_compilers_agree_on_tricky_envdirs(tmp_path: Path) -> None:
    root = write_files(
        tmp_path / "rules",
        {
            "ip4/k/allow": b"",
            "ip4/k/env/NUL": b"a\0b\n",
            "ip4/k/env/TRAIL": b"v \t\r\nmore",
            "ip4/k/env/INNER": b"a \t\r\0b \n",
            "ip4/k/env/NL": b"\n",
            "ip4/k/env/EMPTY": b"",
            "ip4/k/env/CUT": b"x" * 3000 + b"\nrest",
            "ip4/k/env/.dot": b"skipped",
            "ip4/k/env/A=B": b"skipped",
            "ip4/k/exec": b"exactly\n" * 512,
            "ip6/::1_128/deny": b"",
            "ip6/::1_128/env/IGNORED": b"x",
            "uid/0/allow": b"",
            "other/neither/README": b"",
            ".hidden/k/allow": b"",
        },
    )
    theirs, mine = tmp_path / "theirs.cdb", tmp_path / "mine.cdb"
    assert run(SKARNET_CDB_FROM_FS, str(theirs), str(root)).returncode == 0
    assert run(CDB_FROM_FS, str(mine), str(root)).returncode == 0
    a, b = records(theirs), records(mine)
    assert sorted(a) == sorted(b) == [b"ip4/k", b"ip6/::1_128", b"uid/0"]
    for key in a:
        assert normalised(decode(a[key])) == decode(b[key])


@needs_skarnet
def test_env_between_4097_and_4100_bytes(tmp_path: Path) -> None:
    # skarnet's compiler checks env > 4100 where its readers allow 4096: it
    # writes a value that its own decompiler (and s6-tcpserver-access) then
    # rejects. Ours refuses it at compile time.
    root = write_files(tmp_path / "rules", {"ip4/k/allow": b"", "ip4/k/env/L": b"x" * 5000})
    assert run(SKARNET_CDB_FROM_FS, "theirs.cdb", "rules", cwd=tmp_path).returncode == 0
    assert len(records(tmp_path / "theirs.cdb")[b"ip4/k"]) == 5 + 4098
    assert run(SKARNET_FS_FROM_CDB, "rt", "theirs.cdb", cwd=tmp_path).returncode == 111
    done = run(CDB_FROM_FS, "mine.cdb", "rules", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (
        100,
        "s6-accessrules-cdb-from-fs: fatal: rules/ip4/k/env too big\n",
    )
    assert not (tmp_path / "mine.cdb").exists()
    assert root.exists()


@needs_skarnet
def test_multiline_value_survives_our_decompiler(tmp_path: Path) -> None:
    # Ours writes newlines inside a value as NUL bytes, so skarnet's compiler
    # reads the same value back; upstream's decompiler would cut it.
    cdb = tmp_path / "rules.cdb"
    write_cdb(str(cdb), {"ip4/k": b"A\x00\x0aM=one\ntwo\x00\x00\x00"})
    assert run(FS_FROM_CDB, str(tmp_path / "rt"), str(cdb)).returncode == 0
    again = tmp_path / "again.cdb"
    assert run(SKARNET_CDB_FROM_FS, str(again), str(tmp_path / "rt")).returncode == 0
    assert records(again) == {b"ip4/k": b"A\x00\x0aM=one\ntwo\x00\x00\x00"}


COMPILER_USAGE = (
    "s6-accessrules-cdb-from-fs: usage: s6-accessrules-cdb-from-fs [ -m mode ] cdbfile dir"
)
BAD_MODE = "s6-accessrules-cdb-from-fs: fatal: mode needs to be an unsigned integer (in octal)"


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        ([], 100, COMPILER_USAGE),
        (["only.cdb"], 100, COMPILER_USAGE),
        (["-x", "a", "b"], 100, COMPILER_USAGE),
        (["-m"], 100, COMPILER_USAGE),
        (["-m", "9", "a", "b"], 100, BAD_MODE),
        (["-m", "", "a", "b"], 100, BAD_MODE),
        (["-m", "-644", "a", "b"], 100, BAD_MODE),
        (["-m", "77777777777", "a", "b"], 100, BAD_MODE),
        (
            ["out.cdb", "absent"],
            111,
            "s6-accessrules-cdb-from-fs: fatal: "
            "unable to opendir absent: No such file or directory",
        ),
    ],
)
def test_compiler_errors(tmp_path: Path, argv: list[str], code: int, message: str) -> None:
    done = run(CDB_FROM_FS, *argv, cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (code, "", message + "\n")
    assert os.listdir(tmp_path) == []


def test_compiler_mode_option(tmp_path: Path, e08: Path) -> None:
    for argv, mode in (
        (["-m", "644"], 0o644),
        (["-m0640"], 0o640),
        (["--mode=0604"], 0o604),
        (["-m", "100755"], 0o755),
        (["--"], 0o600),
    ):
        cdb = tmp_path / "rules.cdb"
        done = run(CDB_FROM_FS, *argv, str(cdb), str(e08), "ignored")
        assert (done.returncode, done.stderr) == (0, "")
        assert stat.S_IMODE(cdb.stat().st_mode) == mode
        cdb.unlink()


@pytest.mark.parametrize(
    ("files", "code", "message"),
    [
        (
            {"ip4/k/allow": b"", "ip4/k/env/A": b"a" * 2500, "ip4/k/env/B": b"b" * 2500},
            100,
            "rules/ip4/k/env too big",
        ),
        ({"ip4/k/allow": b"", "ip4/k/exec": b"e" * 4097}, 100, "rules/ip4/k/exec too big"),
        ({"ip4/file": b""}, 111, "unable to access rules/ip4/file/allow: Not a directory"),
        ({"toplevel": b""}, 111, "unable to opendir rules/toplevel: Not a directory"),
        (
            {"ip4/k/allow": b"", "ip4/k/env/D/x": b""},
            111,
            "unable to read rules/ip4/k/env/D: Is a directory",
        ),
    ],
)
def test_compiler_failure_keeps_the_old_file(
    tmp_path: Path, files: dict[str, bytes], code: int, message: str
) -> None:
    write_files(tmp_path / "rules", {"ip4/ok/allow": b"", **files})
    (tmp_path / "rules.cdb").write_bytes(b"old")
    done = run(CDB_FROM_FS, "rules.cdb", "rules", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (
        code,
        f"s6-accessrules-cdb-from-fs: fatal: {message}\n",
    )
    assert sorted(os.listdir(tmp_path)) == ["rules", "rules.cdb"]
    assert (tmp_path / "rules.cdb").read_bytes() == b"old"


def test_compiler_cannot_write(tmp_path: Path, e08: Path) -> None:
    done = run(CDB_FROM_FS, str(tmp_path / "absent" / "rules.cdb"), str(e08))
    assert done.returncode == 111
    assert done.stderr.startswith("s6-accessrules-cdb-from-fs: fatal: unable to mkstemp ")
    (tmp_path / "adir" / "sub").mkdir(parents=True)
    done = run(CDB_FROM_FS, str(tmp_path / "adir"), str(e08))
    assert done.returncode == 111
    assert "unable to rename" in done.stderr
    assert sorted(os.listdir(tmp_path)) == ["adir", "rules"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "s6-accessrules-fs-from-cdb: usage: s6-accessrules-fs-from-cdb dir cdbfile"),
        (["only"], "s6-accessrules-fs-from-cdb: usage: s6-accessrules-fs-from-cdb dir cdbfile"),
        (["--"], "s6-accessrules-fs-from-cdb: usage: s6-accessrules-fs-from-cdb dir cdbfile"),
    ],
)
def test_decompiler_usage(tmp_path: Path, argv: list[str], message: str) -> None:
    done = run(FS_FROM_CDB, *argv, cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (100, "", message + "\n")


def test_decompiler_takes_no_options(tmp_path: Path) -> None:
    write_cdb(str(tmp_path / "rules.cdb"), {"ip4/k": b"D"})
    done = run(FS_FROM_CDB, "-h", "rules.cdb", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (0, "")
    assert tree_of(tmp_path / "-h") == {"ip4/k/deny": b""}


def test_decompiler_refuses_an_existing_directory(tmp_path: Path) -> None:
    write_cdb(str(tmp_path / "rules.cdb"), {"ip4/k": b"D"})
    (tmp_path / "rt").mkdir()
    (tmp_path / "rt" / "mine").write_bytes(b"keep")
    done = run(FS_FROM_CDB, "rt", "rules.cdb", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (
        111,
        "s6-accessrules-fs-from-cdb: fatal: unable to mkdir rt: File exists\n",
    )
    assert tree_of(tmp_path / "rt") == {"mine": b"keep"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "unable to cdb_init rules.cdb: No such file or directory"),
        (b"", "unable to cdb_init rules.cdb: invalid cdb file"),
        (b"\xff" * 3000, "unable to cdb_init rules.cdb: invalid cdb file"),
    ],
)
def test_decompiler_bad_cdb(tmp_path: Path, content: bytes | None, message: str) -> None:
    if content is not None:
        (tmp_path / "rules.cdb").write_bytes(content)
    done = run(FS_FROM_CDB, "rt", "rules.cdb", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (
        111,
        f"s6-accessrules-fs-from-cdb: fatal: {message}\n",
    )
    assert not (tmp_path / "rt").exists()


def test_decompiler_truncated_cdb(tmp_path: Path, e08: Path) -> None:
    assert run(CDB_FROM_FS, str(tmp_path / "rules.cdb"), str(e08)).returncode == 0
    whole = (tmp_path / "rules.cdb").read_bytes()
    for cut in (100, 2048, 2100, len(whole) - 5):
        (tmp_path / "rules.cdb").write_bytes(whole[:cut])
        done = run(FS_FROM_CDB, "rt", "rules.cdb", cwd=tmp_path)
        assert done.returncode == 111
        assert done.stderr.startswith("s6-accessrules-fs-from-cdb: fatal: ")
        assert "Traceback" not in done.stderr
        assert not (tmp_path / "rt").exists()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"ip4/ok": b"D", "ip4/bad": b"A\x00"},
            "unable to handle cdb record: rules.cdb does not contain valid accessrules data",
        ),
        ({"ip4/ok": b"D", "../escape": b"D"}, "unable to write rule: invalid key '../escape'"),
        (
            {"ip4/ok": b"D", "ip4/k": b"A\x00\x04a/b\x00\x00\x00"},
            "variable 'a/b' cannot be an envdir file",
        ),
    ],
)
def test_decompiler_removes_partial_output(
    tmp_path: Path, values: dict[str, bytes], message: str
) -> None:
    write_cdb(str(tmp_path / "rules.cdb"), values)
    done = run(FS_FROM_CDB, "rt", "rules.cdb", cwd=tmp_path)
    assert done.returncode == 111
    assert done.stderr.startswith("s6-accessrules-fs-from-cdb: fatal: ")
    assert message in done.stderr
    assert sorted(os.listdir(tmp_path)) == ["rules.cdb"]


def test_decompiler_skips_values_that_are_not_rules(tmp_path: Path) -> None:
    write_cdb(str(tmp_path / "rules.cdb"), {"ip4/ok": b"D", "ip4/odd": b"Xwhatever"})
    assert run(FS_FROM_CDB, "rt", "rules.cdb", cwd=tmp_path).returncode == 0
    assert tree_of(tmp_path / "rt") == {"ip4/ok/deny": b""}


# Keys of the TLS stage (SPEC 4b), as the server derives them from what a
# handshake told: escaped values, with "%", ":", "@", UTF-8 and a component of
# exactly 255 bytes.
TLS_CERT = der.hand_cert(
    subject=der.name((der.CN_OID, 0x0C, "Zoë %".encode())),
    extensions=[
        der.sans(
            der.tlv(0x86, b"spiffe://example.org/ns/x"),
            der.tlv(0x82, b".evil/../ip4/0.0.0.0_0"),
            der.tlv(0x81, b"a\xff\0b@example.org"),
            der.tlv(0x82, b"d" * 251),
        )
    ],
)
TLS_KEYS = [
    *sni_keys("www.Example.org."),
    *sni_keys(None),
    *alpn_keys(b"http/1.1"),
    *alpn_keys(None),
    *cert_keys(TLS_CERT, asked=True),
    *cert_keys(None, asked=True),
]
TLS_TREE = {
    **{f"{key}/deny": b"" for key in TLS_KEYS[::2]},
    **{f"{key}/allow": b"" for key in TLS_KEYS[1::2]},
    **{f"{key}/env/KEY": key.encode() + b"\n" for key in TLS_KEYS[1::2]},
    f"{TLS_KEYS[1]}/exec": b"prog\n",
}
TLS_RULES = {
    **{key: Rule(allow=False) for key in TLS_KEYS[::2]},
    **{key: Rule(allow=True, env=(("KEY", key),)) for key in TLS_KEYS[1::2]},
    TLS_KEYS[1]: Rule(allow=True, env=(("KEY", TLS_KEYS[1]),), exec="prog\n"),
}


def test_tls_keys_are_what_the_tree_holds() -> None:
    assert "san/URI:spiffe:%2F%2Fexample.org%2Fns%2Fx" in TLS_KEYS
    assert "san/DNS:%2Eevil%2F..%2Fip4%2F0.0.0.0_0" in TLS_KEYS
    assert "san/email:a%FF%00b@example.org" in TLS_KEYS
    assert "cn/Zoë %25" in TLS_KEYS
    assert f"san/DNS:{'d' * 251}" in TLS_KEYS  # a component of 255 bytes
    assert len(set(TLS_KEYS)) == len(TLS_KEYS)
    assert {key.partition("/")[0] for key in TLS_KEYS} == set(TLS_FAMILIES)


def test_tls_families_compile_and_decompile(tmp_path: Path) -> None:
    root = write_files(tmp_path / "rules", TLS_TREE)
    directory = DirRules(str(root))
    for key, rule in TLS_RULES.items():
        assert directory.get(key) == rule
    done = run(CDB_FROM_FS, "rules.cdb", "rules", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (0, "")
    assert {k.decode(): decode(v) for k, v in records(tmp_path / "rules.cdb").items()} == TLS_RULES
    done = run(FS_FROM_CDB, "rt", "rules.cdb", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (0, "")
    assert tree_of(tmp_path / "rt") == TLS_TREE


@needs_skarnet
def test_tls_families_with_skarnet_tools(tmp_path: Path) -> None:
    # skarnet's tools take any family under the rules directory: a TLS ruleset
    # goes both ways between theirs and ours, and reads the same in -i and -x.
    root = write_files(tmp_path / "rules", TLS_TREE)
    assert run(SKARNET_CDB_FROM_FS, "theirs.cdb", "rules", cwd=tmp_path).returncode == 0
    assert run(CDB_FROM_FS, "mine.cdb", "rules", cwd=tmp_path).returncode == 0
    theirs, mine = records(tmp_path / "theirs.cdb"), records(tmp_path / "mine.cdb")
    assert sorted(theirs) == sorted(mine) == sorted(key.encode() for key in TLS_KEYS)
    rules = CdbRules(str(tmp_path / "theirs.cdb"))
    try:
        for key, rule in TLS_RULES.items():
            assert rules.get(key) == rule
            assert decode(theirs[key.encode()]) == decode(mine[key.encode()]) == rule
        assert rules.find(sni_keys("x.example.org")) == (
            "sni/example.org",
            TLS_RULES["sni/example.org"],
        )
    finally:
        rules.close()
    assert run(SKARNET_FS_FROM_CDB, "from-mine", "mine.cdb", cwd=tmp_path).returncode == 0
    assert run(FS_FROM_CDB, "from-theirs", "theirs.cdb", cwd=tmp_path).returncode == 0
    assert tree_of(tmp_path / "from-mine") == tree_of(tmp_path / "from-theirs") == TLS_TREE
    assert tree_of(root) == TLS_TREE
