"""Bindings to libflexai.so's C API (cffi, ABI mode): find and load the library, call it, and turn
its errors into exceptions.

This is the only module that talks to cffi. It imports no other flexai module (a test checks
this), so every other module can use it without a cycle, and it opens the library on the first
call that needs it, never at import. It only translates: no policy, no output, no defaults of
its own. Error categories (``FLEXAI_E_*``) are mapped to exception classes here, once.
"""
from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

#: The variable that points the Python package at another build of the library (development).
LIB_DIR_VARIABLE = "FLEXAI_LIB_DIR"

_CDEFS = Path(__file__).with_name("_cdefs.h")
_lock = threading.Lock()
_loaded: tuple[Any, Any] | None = None


def lib_dir() -> Path:
    """Return the directory holding ``libflexai.so``.

    Returns
    -------
    pathlib.Path
        ``$FLEXAI_LIB_DIR`` when set; else the ``lib`` directory inside this package when it
        holds the library; else, when this package is a source checkout's unbuilt ``flexai/``
        (``python -m flexai ...`` run from the repository root imports it ahead of the installed
        one), the ``lib`` directory of the installed distribution, provided it was built from
        the same C API (its ``_cdefs.h`` equals this one); else this package's own ``lib``
        (which has no library: `load` then says what to do).
    """
    override = os.environ.get(LIB_DIR_VARIABLE)
    if override:
        return Path(override)
    own = Path(__file__).parent / "lib"
    if (own / "libflexai.so").is_file():
        return own
    installed, _ = _installed_lib_dir()
    return installed if installed is not None else own


@functools.lru_cache(maxsize=1)
def _installed_lib_dir() -> tuple[Path | None, str]:
    """Find the installed distribution's ``flexai/lib`` for a package that has none of its own.

    Returns ``(directory, "")``, or ``(None, why)`` where ``why`` is what to do about it, in
    words for `load`'s error. Cached: the answer does not change while the process runs.
    """
    source = Path(__file__).resolve().parent
    checkout = (source.parent / "pyproject.toml").is_file()
    todo = (f"run `pip install .` in {source.parent}, or run from outside it"
            if checkout else "reinstall flexai")
    try:
        from importlib import metadata

        dist = metadata.distribution("flexai")
        files = [f for f in dist.files or () if f.name == "libflexai.so"
                 and f.parent.name == "lib"]
        found = [Path(str(f.locate())).resolve() for f in files]
    except Exception:  # not installed (PackageNotFoundError) or unreadable metadata
        return None, todo
    for lib in found:
        if not lib.is_file() or lib.parent.parent == source:
            continue
        cdefs = lib.parent.parent / "_cdefs.h"
        if cdefs.is_file() and cdefs.read_bytes() != _CDEFS.read_bytes():
            return None, (f"the installed flexai ({lib.parent}) was built from other sources "
                          f"(its _cdefs.h differs from {_CDEFS}): {todo}")
        return lib.parent, ""
    return None, todo


def _missing_library_hint() -> str:
    """What to do when `library_path` does not exist, in words (for `load`'s error)."""
    override = os.environ.get(LIB_DIR_VARIABLE)
    if override:
        return f"{LIB_DIR_VARIABLE} is set to {override}; unset it to use the installed flexai"
    return _installed_lib_dir()[1] or "reinstall flexai"


def library_path() -> Path:
    """Return the path of ``libflexai.so`` (the file to put in ``LD_PRELOAD``)."""
    return lib_dir() / "libflexai.so"


# ---- constants of include/flexai.h --------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def constants() -> dict[str, int]:
    """Return the ``#define FLEXAI_* <integer>`` constants of the cffi declarations.

    Read from ``_cdefs.h`` (which a test keeps equal to ``include/flexai.h``) without opening
    the library, so that exceptions can carry their category even when the library is missing.
    """
    text = _CDEFS.read_text()
    return {name: int(value) for name, value in
            re.findall(r"^#define\s+(FLEXAI_\w+)\s+(\d+)\s*$", text, flags=re.M)}


def names(prefix: str) -> dict[int, str]:
    """Map the values of the constants ``prefix + NAME`` to ``name`` in lower case.

    Examples
    --------
    >>> names("FLEXAI_PRIORITY_")                                     # doctest: +SKIP
    {0: 'low', 1: 'normal', 2: 'high'}
    """
    return {value: name[len(prefix):].lower() for name, value in constants().items()
            if name.startswith(prefix)}


def max_devices() -> int:
    """Return ``FLEXAI_MAX_DEVICES``, the number of per-device quota entries."""
    return constants()["FLEXAI_MAX_DEVICES"]


# ---- errors -------------------------------------------------------------------------------------

class FlexaiError(Exception):
    """A libflexai call (or a check of the Python package) failed.

    The message is the library's own one-line explanation, ``"what: why (expected e.g. ...)"``.

    Attributes
    ----------
    code : int or None
        The category, one of the ``FLEXAI_E_*`` values of ``include/flexai.h``; ``None`` only
        for errors of no category (none are raised by flexai itself).
    """

    #: Name of the FLEXAI_E_* constant this class stands for (None: the base class).
    constant: str | None = None

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is None and self.constant is not None:
            code = constants()[self.constant]
        self.code = code

    @property
    def category(self) -> str:
        """The category in words, as the library names it (``"bad value"``, ...)."""
        if self.code is None:
            return "error"
        return error_name(self.code)


class BadValueError(FlexaiError, ValueError):
    """A value given by the caller is invalid; the message names it and shows a valid example.

    Raised for every invalid ``FLEXAI_*`` value; the command line exits with status 2 for it.
    """

    constant = "FLEXAI_E_BAD_VALUE"


#: ``flexai.ConfigError``: the name the package has always used for bad values.
ConfigError = BadValueError


class StateError(FlexaiError):
    """The node's shared state cannot be used (permissions, layout, a closed handle)."""

    constant = "FLEXAI_E_STATE"


class NodeFullError(FlexaiError):
    """A table of the node's shared state is full (slices, devices, processes)."""

    constant = "FLEXAI_E_FULL"


class NotFoundError(FlexaiError, LookupError):
    """No such slice, device or variable."""

    constant = "FLEXAI_E_NOT_FOUND"


class SystemRefusedError(FlexaiError):
    """The operating system refused (memory, files, locks, loading the library)."""

    constant = "FLEXAI_E_SYSTEM"


class QuotaError(FlexaiError):
    """The request does not fit the slice's quota."""

    constant = "FLEXAI_E_QUOTA"


class DriverError(FlexaiError):
    """The real driver is missing or failed."""

    constant = "FLEXAI_E_DRIVER"


class PermissionDeniedError(FlexaiError):
    """The slice belongs to another user (only its owner or root may change it)."""

    constant = "FLEXAI_E_PERMISSION"


#: The one mapping from error categories to exception classes.
ERROR_CLASSES: tuple[type[FlexaiError], ...] = (
    BadValueError, StateError, NodeFullError, NotFoundError, SystemRefusedError, QuotaError,
    DriverError, PermissionDeniedError)


def error_class(code: int) -> type[FlexaiError]:
    """Return the exception class of a ``FLEXAI_E_*`` code (:class:`FlexaiError` if unknown)."""
    for cls in ERROR_CLASSES:
        if cls.constant is not None and constants().get(cls.constant) == code:
            return cls
    return FlexaiError


def error_name(code: int) -> str:
    """Return the library's short name of an error category (``flexai_error_name``)."""
    ffi, lib = load()
    raw: bytes = ffi.string(lib.flexai_error_name(code))
    return raw.decode("utf-8", "replace")


# ---- loading and calling ------------------------------------------------------------------------

def load() -> tuple[Any, Any]:
    """Return ``(ffi, lib)``, opening libflexai.so on the first call.

    Raises
    ------
    SystemRefusedError
        When the library is missing or cannot be loaded.
    """
    global _loaded
    with _lock:
        if _loaded is None:
            import cffi

            path = library_path()
            if not path.is_file():
                raise SystemRefusedError(
                    f"libflexai.so not found at {path}: {_missing_library_hint()}, or set "
                    f"{LIB_DIR_VARIABLE} to the directory that holds it")
            ffi = cffi.FFI()
            ffi.cdef(_CDEFS.read_text())
            try:
                lib = ffi.dlopen(str(path))
            except OSError as exc:
                raise SystemRefusedError(f"cannot load {path}: {exc}") from None
            _loaded = (ffi, lib)
        return _loaded


def new_error() -> Any:
    """Return a fresh ``flexai_error *`` for one call."""
    ffi, _ = load()
    return ffi.new("flexai_error *")


def raise_error(err: Any) -> NoReturn:
    """Raise the exception of a filled ``flexai_error``: its category's class, its message."""
    ffi, _ = load()
    code = int(err.code)
    message = ffi.string(err.message).decode("utf-8", "replace") or "libflexai: unknown error"
    raise error_class(code)(message, code)


def check(rc: int, err: Any) -> int:
    """Return ``rc`` when it is a success (>= 0), else raise the error in ``err``."""
    if rc < 0:
        raise_error(err)
    return rc


def cstring(field: Any) -> str:
    """Decode a NUL-terminated ``char[]`` field or a ``const char *`` (NULL gives "")."""
    ffi, _ = load()
    if field == ffi.NULL:
        return ""
    raw: bytes = ffi.string(field)
    return raw.decode("utf-8", "replace")


def version() -> str:
    """Return the version string compiled into libflexai.so."""
    _, lib = load()
    return cstring(lib.flexai_version())


def config_parse(env: Mapping[str, str]) -> Any:
    """Run ``flexai_config_parse`` on the ``FLEXAI_*`` items of ``env``.

    Returns
    -------
    cdata
        The filled ``flexai_config *``.

    Raises
    ------
    BadValueError
        On the first invalid value, with the library's message.
    """
    ffi, lib = load()
    items = [(k, v) for k, v in env.items() if k.startswith("FLEXAI_")]
    keep = [ffi.new("char[]", os.fsencode(s)) for pair in items for s in pair]
    names_ = ffi.new("const char *[]", keep[0::2] or [ffi.NULL])
    values = ffi.new("const char *[]", keep[1::2] or [ffi.NULL])
    out = ffi.new("flexai_config *")
    err = new_error()
    check(lib.flexai_config_parse(names_, values, len(items), out, ffi.sizeof("flexai_config"),
                                  err), err)
    return out


def parse_size(text: str) -> int:
    """Parse a size such as ``"8GiB"``, ``"4096MiB"``, ``"1.5G"`` (decimal) or ``"1024"``.

    Returns
    -------
    int
        The size in bytes.

    Raises
    ------
    BadValueError
        When the text is malformed, zero or too large.
    """
    ffi, lib = load()
    out = ffi.new("uint64_t *")
    err = new_error()
    check(lib.flexai_parse_size(os.fsencode(text), out, err), err)
    return int(out[0])


@functools.lru_cache(maxsize=None)
def variables() -> tuple[dict[str, Any], ...]:
    """Return the library's contract table (``flexai_vars``) as plain dicts.

    Each dict has the fields of ``flexai_var``: ``name``, ``option`` (None when the variable has
    no command-line option), ``example``, ``choices`` (None unless a choice), ``default_text``,
    ``help``, ``kind`` (a ``FLEXAI_VAR_*`` value) and ``per_slice`` (0 or 1).
    """
    ffi, lib = load()
    table = ffi.new("const flexai_var **")
    count = int(lib.flexai_vars(table))
    out = []
    for i in range(count):
        v = table[0][i]
        out.append({
            "name": cstring(v.name),
            "option": cstring(v.option) or None,
            "example": cstring(v.example),
            "choices": cstring(v.choices) or None,
            "default_text": cstring(v.default_text),
            "help": cstring(v.help),
            "kind": int(v.kind),
            "per_slice": int(v.per_slice),
        })
    return tuple(out)
