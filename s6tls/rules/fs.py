"""Rules kept as a directory tree (the ``-i`` form): read one rule or all, or write a whole tree."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping

from s6tls.rules.codec import EXEC_MAX, Rule
from s6tls.rules.envdir import Vanished, read_envdir, read_head
from s6tls.rules.errors import RulesError, RuleTooBigError


def lookup_dir(rulesdir: str, key: str) -> Rule | None:
    """Return the rule in ``rulesdir/key/``, or None if there is none.

    ``allow`` (with ``env/`` and ``exec``) wins over ``deny``; a missing rules
    directory or key is no rule; anything unreadable raises RulesError.
    """
    if not is_safe_key(key):
        # A reverse-DNS name can hold "." or ".." labels; never let a key
        # climb out of the rules directory.
        return None
    keydir = f"{rulesdir}/{key}"
    for _ in range(_ATTEMPTS - 1):
        try:
            rule, current = _lookup_at(keydir)
        except Vanished:
            continue
        if current:
            return rule
    return _lookup_at(keydir)[0]


# A rule replaced while it is read is read again; a few times is plenty.
_ATTEMPTS = 4


def _lookup_at(keydir: str) -> tuple[Rule | None, bool]:
    """Read one rule through its directory's descriptor, so that a rule
    replaced meanwhile is read whole, old or new, never mixed; also tell
    whether ``keydir`` still names the directory that was read."""
    try:
        fd = os.open(keydir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, True
    except NotADirectoryError:
        raise RulesError(f"unable to access {keydir}/allow: Not a directory") from None
    except OSError as e:
        raise RulesError(f"unable to access {keydir}: {e.strerror}") from None
    try:
        rule = None
        if _exists("allow", fd, keydir):
            env = read_envdir("env", missing_ok=True, dir_fd=fd, shown=f"{keydir}/env")
            rule = Rule(allow=True, env=env, exec=_read_exec(fd, keydir))
        elif _exists("deny", fd, keydir):
            rule = Rule(allow=False)
        return rule, _same_dir(fd, keydir)
    finally:
        os.close(fd)


def _same_dir(fd: int, path: str) -> bool:
    try:
        st, now = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)


class DirRules:
    """Rules read from a directory at every lookup, so edits apply to the next connection."""

    def __init__(self, path: str) -> None:
        self.path = path

    def get(self, key: str) -> Rule | None:
        """Return the rule for ``key``, or None; RulesError if the tree is unreadable."""
        return lookup_dir(self.path, key)

    def find(self, keys: Iterable[str]) -> tuple[str, Rule] | None:
        """Return the first of ``keys`` that has a rule, with its rule, or None."""
        for key in keys:
            rule = lookup_dir(self.path, key)
            if rule is not None:
                return key, rule
        return None

    def find_each(self, groups: Iterable[Iterable[str]]) -> list[tuple[str, Rule] | None]:
        """``find`` for each list of keys (a directory has no version to keep)."""
        return [self.find(keys) for keys in groups]

    def close(self) -> None:
        """Nothing to release; present so every rule source can be closed alike."""


def read_tree(rulesdir: str) -> dict[str, Rule]:
    """Return every rule of a rules directory, by key, in the order of the names.

    Like upstream's compiler, every top-level directory (ip4, ip6, reversedns,
    the TLS stage's sni, alpn, certhash, spki, san, cn, cert, upstream's uid,
    gid, or any other) is read and names starting with a dot are skipped.
    """
    rules: dict[str, Rule] = {}
    for top in _list_dir(rulesdir):
        for name in _list_dir(f"{rulesdir}/{top}"):
            rule = lookup_dir(rulesdir, f"{top}/{name}")
            if rule is not None:
                rules[f"{top}/{name}"] = rule
    return rules


def _list_dir(path: str) -> list[str]:
    try:
        names = os.listdir(path)
    except OSError as e:
        raise RulesError(f"unable to opendir {path}: {e.strerror}") from None
    return sorted(name for name in names if not name.startswith("."))


def write_tree(directory: str, rules: Mapping[str, Rule]) -> None:
    """Create ``directory`` (which must not exist) holding ``rules`` as rule directories.

    On any failure the partial tree is removed and RulesError is raised.
    """
    try:
        os.mkdir(directory)
    except OSError as e:
        raise RulesError(f"unable to mkdir {directory}: {e.strerror}") from None
    try:
        _set_dir_mode(directory)
        for key, rule in rules.items():
            _write_rule(directory, key, rule)
    except BaseException:
        import shutil  # here only: the server never writes a tree

        shutil.rmtree(directory, ignore_errors=True)
        raise


def is_safe_key(key: str) -> bool:
    """Tell whether ``key`` names a path strictly inside the rules directory."""
    return "\0" not in key and all(part not in ("", ".", "..") for part in key.split("/"))


def _exists(name: str, dir_fd: int, keydir: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise RulesError(f"unable to access {keydir}/{name}: {e.strerror}") from None
    return True


def _read_exec(dir_fd: int, keydir: str) -> str:
    path = f"{keydir}/exec"
    try:
        content = read_head("exec", EXEC_MAX + 1, dir_fd=dir_fd)
    except FileNotFoundError:
        return ""
    except OSError as e:
        raise RulesError(f"unable to read {path}: {e.strerror}") from None
    if len(content) > EXEC_MAX:
        # Upstream silently truncates at 4096 bytes; a cut command line is
        # worse than a refused connection.
        raise RuleTooBigError("exec", len(content), f"{path} too big")
    return os.fsdecode(content)


def _write_rule(directory: str, key: str, rule: Rule) -> None:
    if not is_safe_key(key):
        raise RulesError(f"unable to write rule: invalid key {key!r}")
    path = directory
    for part in key.split("/"):
        path = f"{path}/{part}"
        make_dir(path)
    if not rule.allow:
        _write_file(f"{path}/deny", b"")
        return
    _write_file(f"{path}/allow", b"")
    if rule.env:
        envdir = f"{path}/env"
        make_dir(envdir)
        for name, value in rule.env:
            _write_file(f"{envdir}/{_envdir_name(envdir, name)}", _envdir_content(value))
    if rule.exec:
        _write_file(f"{path}/exec", os.fsencode(rule.exec))


def _envdir_name(envdir: str, name: str) -> str:
    if not name or name.startswith(".") or "/" in name or "=" in name or "\0" in name:
        raise RulesError(f"unable to write {envdir}: variable {name!r} cannot be an envdir file")
    return name


def _envdir_content(value: str | None) -> bytes:
    # An empty file unsets; otherwise one line. Newlines inside the value are
    # written as NUL bytes, which envdir readers turn back into newlines, so
    # the tree compiles to the same value (upstream writes them raw and loses
    # everything after the first).
    if value is None:
        return b""
    return os.fsencode(value).replace(b"\n", b"\0") + b"\n"


def make_dir(path: str) -> bool:
    """Make sure ``path`` is a directory, creating it 0755 if missing; tell whether it was created.

    RulesError names the real cause: a missing parent, a file in the way
    (``Not a directory``), a directory that cannot be written.
    """
    try:
        os.mkdir(path)
    except FileExistsError:
        check_dir(path)
        return False
    except OSError as e:
        raise RulesError(f"unable to mkdir {path}: {e.strerror}") from None
    _set_dir_mode(path)
    return True


def check_dir(path: str) -> None:
    """Raise RulesError with the system's reason unless ``path`` is (or links to) a directory."""
    try:
        # O_PATH asks for no permission on the directory itself: only its kind matters here.
        os.close(os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
    except OSError as e:
        raise RulesError(f"unable to open {path}: {e.strerror}") from None


def _set_dir_mode(path: str) -> None:
    # Upstream creates directories 0755 whatever the umask (a set-group-id
    # bit inherited from the parent stays).
    try:
        inherited = os.stat(path).st_mode & stat.S_ISGID
        os.chmod(path, 0o755 | inherited)
    except OSError as e:
        raise RulesError(f"unable to chmod {path}: {e.strerror}") from None


def _write_file(path: str, content: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    except OSError as e:
        raise RulesError(f"unable to write {path}: {e.strerror}") from None
