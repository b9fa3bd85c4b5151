"""Rules kept in a cdb file (the ``-x`` form): compile a tree, write it atomically, read it back."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable, Mapping

import cdbx

from s6tls.rules.codec import Rule, decode, decode_all, encode
from s6tls.rules.errors import NotARuleError, RulesError, RuleTooBigError
from s6tls.rules.fs import read_tree

# What cdbx raises for a file that is not a valid cdb (it depends on where the
# damage is): OSError "Format Error", ValueError, OverflowError, SystemError.
_CDB_ERRORS = (OSError, ValueError, ArithmeticError, SystemError)

# The temporary file is named like upstream's: cdbfile:s6-accessrules-cdb-from-fs:XXXXXX.
_TEMP_TAG = ":s6-accessrules-cdb-from-fs:"

_Identity = tuple[int, int, int, int, int]


def compile_dir(rulesdir: str) -> dict[str, bytes]:
    """Return the cdb records (key to value) for every rule in a rules directory (see read_tree)."""
    records: dict[str, bytes] = {}
    for key, rule in read_tree(rulesdir).items():
        try:
            records[key] = encode(rule)
        except RuleTooBigError as e:
            message = f"{rulesdir}/{key}/{e.part} too big"
            raise RuleTooBigError(e.part, e.size, message) from None
        except RulesError as e:
            raise RulesError(f"unable to compile {rulesdir}/{key}: {e}") from None
    return records


def write_cdb(path: str, records: Mapping[str, bytes], mode: int | None = None) -> None:
    """Write ``records`` as a cdb at ``path``, replacing it atomically.

    The file is built beside ``path`` and renamed into place; it keeps mkstemp's
    mode 0600 unless ``mode`` is given. On failure nothing is left behind.
    """
    directory, base = os.path.split(path)
    try:
        fd, temp = tempfile.mkstemp(prefix=f"{base}{_TEMP_TAG}", dir=directory or ".")
    except OSError as e:
        template = f"{path}{_TEMP_TAG}XXXXXX"
        raise RulesError(f"unable to mkstemp {template}: {e.strerror}") from None
    try:
        try:
            maker = cdbx.CDB.make(fd)
            for key, value in records.items():
                maker.add(os.fsencode(key), value)
            maker.commit().close()
            os.fsync(fd)
        except OSError as e:
            raise RulesError(f"unable to write {temp}: {e.strerror}") from None
        finally:
            os.close(fd)
        if mode is not None:
            try:
                os.chmod(temp, mode & 0o7777)
            except OSError as e:
                raise RulesError(f"unable to chmod {temp}: {e.strerror}") from None
        try:
            os.rename(temp, path)
        except OSError as e:
            raise RulesError(f"unable to rename {temp} to {path}: {e.strerror}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def read_cdb(path: str) -> dict[str, bytes]:
    """Return every key of a cdb file with its first value, in file order."""
    cdb, _ = _open(path)
    try:
        return {os.fsdecode(key): value for key, value in cdb.items()}
    except _CDB_ERRORS:
        raise RulesError(f"unable to read {path}: invalid cdb file") from None
    finally:
        cdb.close()


def read_cdb_rules(path: str) -> dict[str, Rule]:
    """Return every rule of a cdb file, by key, in file order (see decode_all)."""
    records = read_cdb(path)
    try:
        return decode_all(records)
    except RulesError as e:
        raise RulesError(f"unable to read {path}: {e}") from None


class CdbRules:
    """Rules from a cdb file, reloaded only when the file at ``path`` changes.

    A file replaced by rename applies at the next lookup; an unchanged one is
    not read again. The loaded copy lives in memory, so an in-place rewrite
    can never fault a lookup.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._identity: _Identity | None = None
        self._cdb: cdbx.CDB | None = None
        self._failure: str | None = None

    def get(self, key: str) -> Rule | None:
        """Return the rule for ``key``, or None; RulesError if the file is unusable."""
        found = self.find((key,))
        return None if found is None else found[1]

    def find(self, keys: Iterable[str]) -> tuple[str, Rule] | None:
        """Return the first of ``keys`` that has a rule, with its rule, or None.

        The file is checked for a change once per call, so all keys are looked
        up in the same version of the rules.
        """
        return self._find(self._current(), keys)

    def find_each(self, groups: Iterable[Iterable[str]]) -> list[tuple[str, Rule] | None]:
        """``find`` for each list of keys, all in the same version of the file."""
        cdb = self._current()
        return [self._find(cdb, keys) for keys in groups]

    def _find(self, cdb: cdbx.CDB, keys: Iterable[str]) -> tuple[str, Rule] | None:
        for key in keys:
            try:
                value = cdb.get(os.fsencode(key))
            except _CDB_ERRORS:
                raise RulesError(f"unable to read {self.path}: invalid cdb file") from None
            if value is None:
                continue
            try:
                return key, decode(value)
            except NotARuleError:
                continue
            except RulesError as e:
                raise RulesError(f"unable to read {self.path}: key {key}: {e}") from None
        return None

    def close(self) -> None:
        """Release the loaded copy; the next lookup loads the file again."""
        if self._cdb is not None:
            self._cdb.close()
        self._cdb = None
        self._identity = None
        self._failure = None

    def _current(self) -> cdbx.CDB:
        try:
            st = os.stat(self.path)
        except OSError as e:
            self.close()
            raise RulesError(f"unable to cdb_init {self.path}: {e.strerror}") from None
        if _identity(st) == self._identity:
            if self._failure is not None:
                # A fresh exception each time: re-raising one instance would
                # grow its traceback at every connection.
                raise RulesError(self._failure)
            assert self._cdb is not None
            return self._cdb
        self.close()
        try:
            self._cdb, self._identity = _open(self.path)
        except RulesError as e:
            self._identity = _identity(st)
            self._failure = str(e)
            raise
        return self._cdb


def _identity(st: os.stat_result) -> _Identity:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


def _open(path: str) -> tuple[cdbx.CDB, _Identity]:
    """Copy the file into anonymous memory and open that copy as a cdb."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        raise RulesError(f"unable to cdb_init {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RulesError(f"unable to cdb_init {path}: not a regular file")
        copy = os.memfd_create("s6tls-rules", os.MFD_CLOEXEC)
        try:
            _copy_all(fd, copy)
        except OSError:
            os.close(copy)
            raise
    except OSError as e:
        raise RulesError(f"unable to cdb_init {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    try:
        # On success the cdb owns the copy and closes it with itself.
        return cdbx.CDB(copy, close=True, mmap=True), _identity(st)
    except _CDB_ERRORS:
        os.close(copy)
        raise RulesError(f"unable to cdb_init {path}: invalid cdb file") from None


def _copy_all(source: int, target: int) -> None:
    while True:
        chunk = os.read(source, 1 << 16)
        if not chunk:
            return
        view = memoryview(chunk)
        while view:
            view = view[os.write(target, view) :]
