"""Tests for rule directories, cdb files and the decision (s6tls.rules.fs, .cdbfile)."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import cdbx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s6tls.rules import (
    DirRules,
    Rule,
    RulesError,
    RuleTooBigError,
    decide,
    encode,
    lookup_dir,
    read_tree,
    write_tree,
)
from s6tls.rules.cdbfile import CdbRules, compile_dir, read_cdb, write_cdb
from tests.support.trees import write_files

E08_RULES = {
    "ip4/127.0.0.1_32": Rule(
        allow=True, env=(("EMPTY", None), ("FOO", "bar"), ("TWOLINES", "first"))
    ),
    "ip4/127.0.0.2_32": Rule(allow=False),
    "ip4/127.0.0.4_32": Rule(allow=True, exec="test/envdump\n"),
    "reversedns/localhost": Rule(allow=True, env=(("VIA", "rdns"),)),
}


@pytest.fixture
def e08(tmp_path: Path) -> Path:
    """The REFERENCE E08 tree: allow+env, deny, exec, reversedns."""
    return write_files(
        tmp_path / "rules",
        {
            "ip4/127.0.0.1_32/allow": b"",
            "ip4/127.0.0.1_32/env/FOO": b"bar\n",
            "ip4/127.0.0.1_32/env/EMPTY": b"",
            "ip4/127.0.0.1_32/env/TWOLINES": b"first\nsecond\n",
            "ip4/127.0.0.2_32/deny": b"",
            "ip4/127.0.0.4_32/allow": b"",
            "ip4/127.0.0.4_32/exec": b"test/envdump\n",
            "reversedns/localhost/allow": b"",
            "reversedns/localhost/env/VIA": b"rdns\n",
        },
    )


# --- directory form ------------------------------------------------------------


def test_lookup_dir(e08: Path) -> None:
    for key, rule in E08_RULES.items():
        assert lookup_dir(str(e08), key) == rule
    assert lookup_dir(str(e08), "ip4/127.0.0.3_32") is None
    assert lookup_dir(str(e08), "ip6/::1_128") is None


def test_allow_wins_over_deny_and_neither_is_no_rule(tmp_path: Path) -> None:
    root = write_files(tmp_path, {"ip4/a/allow": b"", "ip4/a/deny": b"", "ip4/b/other": b""})
    assert lookup_dir(str(root), "ip4/a") == Rule(allow=True)
    assert lookup_dir(str(root), "ip4/b") is None


def test_env_and_exec_ignored_with_deny(tmp_path: Path) -> None:
    root = write_files(tmp_path, {"ip4/a/deny": b"", "ip4/a/env/X": b"1", "ip4/a/exec": b"x"})
    assert lookup_dir(str(root), "ip4/a") == Rule(allow=False)


def test_missing_rules_directory_is_no_rule(tmp_path: Path) -> None:
    assert lookup_dir(str(tmp_path / "absent"), "ip4/1.2.3.4_32") is None


@pytest.mark.parametrize(
    ("files", "key", "message"),
    [
        ({"ip4": b""}, "ip4/1.2.3.4_32", "Not a directory"),
        ({"ip4/k": b""}, "ip4/k", "k/allow: Not a directory"),
        ({"ip4/k/allow": b"", "ip4/k/env": b""}, "ip4/k", "env: Not a directory"),
        ({"ip4/k/allow": b"", "ip4/k/exec/x": b""}, "ip4/k", "exec: Is a directory"),
    ],
)
def test_unusable_tree_is_an_error(
    tmp_path: Path, files: dict[str, bytes], key: str, message: str
) -> None:
    root = write_files(tmp_path / "rules", files)
    with pytest.raises(RulesError, match=message):
        lookup_dir(str(root), key)


def test_symlink_loop_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "ip4").mkdir()
    os.symlink("loop", tmp_path / "ip4" / "loop")
    with pytest.raises(RulesError, match="ip4/loop"):
        lookup_dir(str(tmp_path), "ip4/loop")


def test_unreadable_key_is_an_error() -> None:
    # Upstream reads EACCES as "no rule" and goes on to shorter prefixes;
    # refusing is safer. Root reads anything, so look as nobody then.
    as_nobody = os.geteuid() == 0
    if as_nobody and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv")
    with tempfile.TemporaryDirectory() as top:
        os.chmod(top, 0o755)
        root = write_files(Path(top) / "rules", {"ip4/k/allow": b""})
        (root / "ip4").chmod(0)
        try:
            if not as_nobody:
                with pytest.raises(RulesError, match="Permission denied"):
                    lookup_dir(str(root), "ip4/k")
                return
            probe = (
                "import sys\n"
                "from s6tls.rules import RulesError, lookup_dir\n"
                "try:\n"
                "    lookup_dir(sys.argv[1], 'ip4/k')\n"
                "except RulesError as e:\n"
                "    print(e)\n"
            )
            nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            done = subprocess.run(
                [*nobody, sys.executable, "-c", probe, str(root)],
                capture_output=True,
                text=True,
                check=True,
            )
            assert done.stdout == f"unable to access {root}/ip4/k: Permission denied\n"
        finally:
            (root / "ip4").chmod(0o755)


def test_exec_over_4096_bytes_is_refused(tmp_path: Path) -> None:
    root = write_files(tmp_path, {"ip4/k/allow": b"", "ip4/k/exec": b"e" * 4096})
    assert lookup_dir(str(root), "ip4/k") == Rule(allow=True, exec="e" * 4096)
    (root / "ip4/k/exec").write_bytes(b"e" * 4097)
    with pytest.raises(RuleTooBigError, match="exec too big"):
        lookup_dir(str(root), "ip4/k")


@pytest.mark.parametrize("key", ["reversedns/.", "reversedns/..", "ip4//x", "../rules/ip4/k", ""])
def test_keys_never_leave_the_rules_directory(tmp_path: Path, key: str) -> None:
    root = write_files(
        tmp_path / "rules", {"allow": b"", "reversedns/allow": b"", "ip4/k/allow": b""}
    )
    assert lookup_dir(str(root), key) is None


def test_dir_rules_apply_edits_at_once(tmp_path: Path) -> None:
    rules = DirRules(str(tmp_path))
    assert rules.get("ip4/1.2.3.4_32") is None
    write_files(tmp_path, {"ip4/1.2.3.4_32/deny": b""})
    assert rules.get("ip4/1.2.3.4_32") == Rule(allow=False)
    write_files(tmp_path, {"ip4/1.2.3.4_32/allow": b""})
    assert rules.get("ip4/1.2.3.4_32") == Rule(allow=True)


# --- writing a tree ------------------------------------------------------------


def test_write_tree_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "out"
    write_tree(str(target), E08_RULES)
    for key, rule in E08_RULES.items():
        assert lookup_dir(str(target), key) == rule
    assert (target / "ip4/127.0.0.1_32/env/FOO").read_bytes() == b"bar\n"
    assert (target / "ip4/127.0.0.1_32/env/EMPTY").read_bytes() == b""
    assert (target / "ip4/127.0.0.4_32/exec").read_bytes() == b"test/envdump\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert stat.S_IMODE((target / "ip4/127.0.0.1_32/env").stat().st_mode) == 0o755


def test_write_tree_keeps_newlines_and_empty_values(tmp_path: Path) -> None:
    rule = Rule(allow=True, env=(("E", ""), ("M", "one\ntwo\n")))
    write_tree(str(tmp_path / "out"), {"ip4/k": rule})
    assert (tmp_path / "out/ip4/k/env/M").read_bytes() == b"one\0two\0\n"
    assert lookup_dir(str(tmp_path / "out"), "ip4/k") == rule


def test_write_tree_refuses_an_existing_directory(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_bytes(b"x")
    with pytest.raises(RulesError, match="File exists"):
        write_tree(str(tmp_path / "out"), E08_RULES)
    assert os.listdir(tmp_path / "out") == ["keep"]


@pytest.mark.parametrize(
    "rules",
    [
        {"ip4/a": Rule(allow=True), "../escape": Rule(allow=True)},
        {"ip4/a": Rule(allow=True), "ip4/b": Rule(allow=True, env=(("a/b", "1"),))},
        {"ip4/a": Rule(allow=True), "ip4/b": Rule(allow=True, env=((".x", "1"),))},
    ],
)
def test_write_tree_removes_partial_output(tmp_path: Path, rules: dict[str, Rule]) -> None:
    with pytest.raises(RulesError):
        write_tree(str(tmp_path / "out"), rules)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "escape").exists()


env_names = st.text(st.sampled_from("ABCxyz_09"), min_size=1, max_size=8)
# Values an envdir can hold: no NUL, no trailing blank.
env_values = st.none() | st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), max_size=30
).filter(lambda v: not v.endswith((" ", "\t", "\r")))
tree_rules = st.dictionaries(
    st.builds(lambda top, name: f"{top}/{name}", st.sampled_from(["ip4", "ip6", "x"]), env_names),
    st.builds(
        Rule,
        allow=st.booleans(),
        env=st.dictionaries(env_names, env_values, max_size=4).map(
            lambda d: tuple(sorted(d.items()))
        ),
        exec=st.text(st.characters(blacklist_categories=["Cs"]), max_size=40),
    ).map(lambda r: r if r.allow else Rule(allow=False)),
    max_size=6,
)


@settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(tree_rules)
def test_tree_to_cdb_to_tree(tmp_path: Path, rules: dict[str, Rule]) -> None:
    work = tmp_path / str(len(os.listdir(tmp_path)))
    work.mkdir()
    write_tree(str(work / "tree"), rules)
    write_cdb(str(work / "rules.cdb"), compile_dir(str(work / "tree")))
    cdb = CdbRules(str(work / "rules.cdb"))
    for key, rule in rules.items():
        assert cdb.get(key) == rule
    assert sorted(read_cdb(str(work / "rules.cdb"))) == sorted(rules)
    cdb.close()


# --- compiling -----------------------------------------------------------------


def test_compile_e08(e08: Path) -> None:
    records = compile_dir(str(e08))
    assert records == {key: encode(rule) for key, rule in E08_RULES.items()}


def test_compile_walks_every_top_directory_and_skips_dot_names(tmp_path: Path) -> None:
    root = write_files(
        tmp_path,
        {
            "uid/0/allow": b"",
            "gid/default/deny": b"",
            "custom/thing/allow": b"",
            ".hidden/k/allow": b"",
            "ip4/.k/allow": b"",
            "ip4/nothing/README": b"",
        },
    )
    assert sorted(compile_dir(str(root))) == ["custom/thing", "gid/default", "uid/0"]
    assert read_tree(str(root)) == {
        "custom/thing": Rule(allow=True),
        "gid/default": Rule(allow=False),
        "uid/0": Rule(allow=True),
    }


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"file": b""}, "unable to opendir .*/file: Not a directory"),
        ({"ip4/file": b""}, "unable to access .*/ip4/file/allow: Not a directory"),
        ({"ip4/k/allow": b"", "ip4/k/env/SUB/x": b""}, "SUB: Is a directory"),
    ],
)
def test_compile_errors(tmp_path: Path, files: dict[str, bytes], message: str) -> None:
    root = write_files(tmp_path / "rules", files)
    with pytest.raises(RulesError, match=message):
        compile_dir(str(root))


def test_compile_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match=r"unable to opendir .*absent: No such file"):
        compile_dir(str(tmp_path / "absent"))


def test_compile_env_too_big_names_the_rule(tmp_path: Path) -> None:
    # Two variables of 2500 bytes: each fits an envdir, together not a cdb value.
    root = write_files(
        tmp_path / "rules",
        {"ip4/k/allow": b"", "ip4/k/env/A": b"a" * 2500, "ip4/k/env/B": b"b" * 2500},
    )
    with pytest.raises(RuleTooBigError) as info:
        compile_dir(str(root))
    assert str(info.value) == f"{root}/ip4/k/env too big"


# --- writing a cdb -------------------------------------------------------------


def test_write_cdb_default_mode_and_content(tmp_path: Path) -> None:
    path = tmp_path / "rules.cdb"
    write_cdb(str(path), {"ip4/k": b"D", "ip6/k": b"A\x00\x00\x00\x00"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert dict(cdbx.CDB(str(path)).items()) == {b"ip4/k": b"D", b"ip6/k": b"A\x00\x00\x00\x00"}
    assert os.listdir(tmp_path) == ["rules.cdb"]


def test_write_cdb_mode(tmp_path: Path) -> None:
    path = tmp_path / "rules.cdb"
    write_cdb(str(path), {}, mode=0o644)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    write_cdb(str(path), {}, mode=0o100640)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_write_cdb_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "rules.cdb"
    write_cdb(str(path), {"ip4/k": b"D"})
    with open(path, "rb") as old:
        write_cdb(str(path), {"ip4/k": b"A\x00\x00\x00\x00"})
        # The old inode is intact: a reader that had it open keeps its view.
        assert dict(cdbx.CDB(old.fileno()).items()) == {b"ip4/k": b"D"}
    assert read_cdb(str(path)) == {"ip4/k": b"A\x00\x00\x00\x00"}


def test_write_cdb_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "adir"
    (target / "inside").mkdir(parents=True)
    with pytest.raises(RulesError, match="unable to rename"):
        write_cdb(str(target), {"k": b"D"})
    assert sorted(os.listdir(tmp_path)) == ["adir"]
    with pytest.raises(RulesError, match="unable to mkstemp"):
        write_cdb(str(tmp_path / "absent" / "rules.cdb"), {"k": b"D"})
    assert sorted(os.listdir(tmp_path)) == ["adir"]


# --- reading a cdb -------------------------------------------------------------


def test_cdb_rules(tmp_path: Path, e08: Path) -> None:
    path = tmp_path / "rules.cdb"
    write_cdb(str(path), compile_dir(str(e08)))
    rules = CdbRules(str(path))
    for key, rule in E08_RULES.items():
        assert rules.get(key) == rule
    assert rules.get("ip4/127.0.0.3_32") is None
    assert rules.find(["ip4/127.0.0.3_32", "ip4/127.0.0.2_32", "ip4/127.0.0.1_32"]) == (
        "ip4/127.0.0.2_32",
        Rule(allow=False),
    )


def test_cdb_rules_not_reloaded_while_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "rules.cdb"
    write_cdb(str(path), {"ip4/k": b"D"})
    rules = CdbRules(str(path))
    assert rules.get("ip4/k") == Rule(allow=False)
    loaded = rules._cdb
    for _ in range(5):
        assert rules.get("ip4/k") == Rule(allow=False)
        assert rules.find(["ip4/x", "ip4/k"]) is not None
    assert rules._cdb is loaded


def test_cdb_rules_follow_atomic_replacement(tmp_path: Path) -> None:
    path = tmp_path / "rules.cdb"
    write_cdb(str(path), {"ip4/k": b"D"})
    rules = CdbRules(str(path))
    assert rules.get("ip4/k") == Rule(allow=False)
    loaded = rules._cdb
    write_cdb(str(path), {"ip4/k": b"A\x00\x00\x00\x00"})
    assert rules.get("ip4/k") == Rule(allow=True)
    assert rules._cdb is not loaded


def test_cdb_rules_read_a_private_copy(tmp_path: Path) -> None:
    # Lookups use an anonymous in-memory copy, so an in-place rewrite of the
    # file (truncate, then write) can never fault them; the change is seen
    # at the next lookup.
    path = tmp_path / "rules.cdb"
    write_cdb(str(path), {"ip4/k": b"D"})
    rules = CdbRules(str(path))
    assert rules.get("ip4/k") == Rule(allow=False)
    assert rules._cdb is not None
    assert os.readlink(f"/proc/self/fd/{rules._cdb.fileno()}").startswith("/memfd:")
    with open(path, "r+b") as f:
        f.truncate(0)
    with pytest.raises(RulesError, match="invalid cdb"):
        rules.get("ip4/k")


def test_missing_cdb_then_created(tmp_path: Path) -> None:
    path = tmp_path / "rules.cdb"
    rules = CdbRules(str(path))
    with pytest.raises(RulesError) as info:
        rules.get("ip4/k")
    assert str(info.value) == f"unable to cdb_init {path}: No such file or directory"
    write_cdb(str(path), {"ip4/k": b"D"})
    assert rules.get("ip4/k") == Rule(allow=False)
    path.unlink()
    with pytest.raises(RulesError, match="unable to cdb_init"):
        rules.get("ip4/k")


@pytest.mark.parametrize("cut", [0, 1, 100, 2047, 2048, 2060])
def test_truncated_cdb_is_an_error_then_recovers(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "rules.cdb"
    write_cdb(str(path), {"ip4/127.0.0.1_32": b"D", "ip4/127.0.0.2_32": b"D"})
    whole = path.read_bytes()
    path.write_bytes(whole[:cut])
    rules = CdbRules(str(path))
    with pytest.raises(RulesError, match=str(path)) as first:
        rules.find(["ip4/127.0.0.1_32", "ip4/127.0.0.2_32"])
    with pytest.raises(RulesError) as second:
        rules.find(["ip4/127.0.0.1_32"])
    assert first.value is not second.value
    tmp = tmp_path / "new"
    tmp.write_bytes(whole)
    tmp.rename(path)
    assert rules.get("ip4/127.0.0.1_32") == Rule(allow=False)


def test_cdb_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="unable to cdb_init"):
        CdbRules(str(tmp_path)).get("ip4/k")


def test_bad_value_names_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.cdb"
    write_cdb(str(path), {"ip4/bad": b"A\x00", "ip4/odd": b"Xtype", "ip4/ok": b"D"})
    rules = CdbRules(str(path))
    with pytest.raises(RulesError, match=f"{path}: key ip4/bad"):
        rules.get("ip4/bad")
    # An unknown type byte is no rule: the search goes on.
    assert rules.get("ip4/odd") is None
    assert rules.find(["ip4/odd", "ip4/ok"]) == ("ip4/ok", Rule(allow=False))


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.data())
def test_damaged_cdb_gives_rules_error_only(tmp_path: Path, data: st.DataObject) -> None:
    path = tmp_path / "rules.cdb"
    if not path.exists():
        write_cdb(str(path), {f"ip4/10.0.0.{i}_32": b"D" for i in range(20)})
    whole = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        whole[data.draw(st.integers(0, len(whole) - 1))] = data.draw(st.integers(0, 255))
    whole = whole[: data.draw(st.integers(0, len(whole)))]
    damaged = tmp_path / "damaged.cdb"
    damaged.write_bytes(bytes(whole))
    # Anything but RulesError (or a crash) fails the test.
    with contextlib.suppress(RulesError):
        CdbRules(str(damaged)).find([f"ip4/10.0.0.{i}_32" for i in range(25)])
    with contextlib.suppress(RulesError):
        read_cdb(str(damaged))


# --- the decision --------------------------------------------------------------


@pytest.fixture(params=["dir", "cdb"])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> DirRules | CdbRules:
    root = write_files(
        tmp_path / "rules",
        {
            "ip4/10.0.0.0_8/allow": b"",
            "ip4/10.1.0.0_16/deny": b"",
            "ip4/10.1.2.3_32/allow": b"",
            "ip6/2001:db8::_32/allow": b"",
            "reversedns/bad.example.com/deny": b"",
            "reversedns/example.com/allow": b"",
            "reversedns/example.com/env/VIA": b"rdns\n",
        },
    )
    if request.param == "dir":
        return DirRules(str(root))
    write_cdb(str(tmp_path / "rules.cdb"), compile_dir(str(root)))
    return CdbRules(str(tmp_path / "rules.cdb"))


def test_decide(source: DirRules | CdbRules) -> None:
    allow, deny = Rule(allow=True), Rule(allow=False)
    via = Rule(allow=True, env=(("VIA", "rdns"),))
    assert decide(source, "10.1.2.3", None) == ("ip4/10.1.2.3_32", allow)
    assert decide(source, "10.1.2.4", "x.example.com.") == ("ip4/10.1.0.0_16", deny)
    assert decide(source, "10.9.9.9", None) == ("ip4/10.0.0.0_8", allow)
    assert decide(source, "192.0.2.1", None) is None
    assert decide(source, "192.0.2.1", "") is None
    assert decide(source, "192.0.2.1", "host.example.com.") == ("reversedns/example.com", via)
    assert decide(source, "192.0.2.1", "a.bad.example.com") == (
        "reversedns/bad.example.com",
        deny,
    )
    assert decide(source, "192.0.2.1", "example.org") is None
    assert decide(source, "2001:db8:1::5", None) == ("ip6/2001:db8::_32", allow)
    assert decide(source, "2001:db9::5", None) is None
