"""Loading variant files and modules: `load_variants(path_or_module)`, `load_variant(target, name)`.

A file is imported once under a name derived from its resolved path, so loading it again (the
`rebuild:` snippet of a counterexample does) gives the same module and the same classes."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from moelora_core.errors import MoELoRAError

from .base import VariantError, is_variant_file
from .variant import Variant


def line_in(exc: BaseException, path: Path) -> str:
    """':LINE' of the last traceback frame inside `path` ('' if none)."""
    line = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename).resolve() == path:
            line = f":{frame.lineno}"
    return line


def import_message(exc: BaseException, where: str, path: Path | None) -> str:
    if isinstance(exc, SyntaxError):
        loc = f"{exc.filename}:{exc.lineno}" if exc.filename else where
        return f"{loc}: syntax error: {exc.msg}"
    line = line_in(exc, path) if path is not None else ""
    if isinstance(exc, ImportError):
        return f"{where}{line}: import failed: {exc}"
    if isinstance(exc, MoELoRAError):
        return f"{where}{line}: {exc}"
    return f"{where}{line}: {type(exc).__name__} while loading the variant: {exc}"


@contextmanager
def on_path(directory: Path) -> Iterator[None]:
    """Let a variant file import the modules beside it."""
    entry = str(directory)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        if entry in sys.path:
            sys.path.remove(entry)


def load_module(path: str | os.PathLike[str]) -> ModuleType:
    """The module of a variant file, imported once per resolved path."""
    path = Path(path).resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", path.stem)
    modname = f"_moelora_variant_{stem}_{digest}"
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise VariantError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module  # dataclasses and pickling look the module up here
    try:
        with on_path(path.parent):
            spec.loader.exec_module(module)
    except BaseException as e:
        del sys.modules[modname]
        if not isinstance(e, Exception):
            raise
        raise VariantError(import_message(e, str(path), path)) from None
    return module


def variants_of(module: ModuleType, where: str, origin: str) -> list[Variant]:
    single, many = getattr(module, "VARIANT", None), getattr(module, "VARIANTS", None)
    if single is None and many is None:
        raise VariantError(f"{where}: no module-level VARIANT = Variant(...) or VARIANTS = [...]")
    found: list[Any] = ([single] if single is not None else []) + (
        list(many) if many is not None else []
    )
    if not found:
        raise VariantError(f"{where}: VARIANTS is empty; expected at least one Variant(...)")
    for v in found:
        if not isinstance(v, Variant):
            raise VariantError(
                f"{where}: VARIANT(S) holds {type(v).__name__}; expected proofs_numeric.variants.Variant"
            )
        if v.source is None:
            v.source, v.origin, v.module = where, origin, module
    return found


def load_variants(target: str | os.PathLike[str]) -> list[Variant]:
    """The variants declared by a .py file, by the `*_variant.py`/`moelora_variant_*.py` files of a
    directory, or by a dotted module name. Raises VariantError with a one-line reason."""
    text = os.fspath(target)
    p = Path(text)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and is_variant_file(f))
        if not files:
            raise VariantError(
                f"{text}: no variant file (named *_variant.py or moelora_variant_*.py) in this directory"
            )
        return [v for f in files for v in load_variants(f)]
    if p.suffix == ".py" or os.sep in text or "/" in text:
        if not p.is_file():
            raise VariantError(f"{text}: no such file")
        return variants_of(load_module(p), text, str(p.resolve()))
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", text):
        raise VariantError(f"{text!r}: expected a .py file, a directory or a dotted module name")
    try:
        module = importlib.import_module(text)
    except ModuleNotFoundError as e:
        if e.name is not None and (text == e.name or text.startswith(e.name + ".")):
            raise VariantError(f"{text}: no such file, directory or importable module") from None
        raise VariantError(import_message(e, text, None)) from None
    except Exception as e:
        origin = getattr(e, "__traceback__", None)
        path = Path(traceback.extract_tb(origin)[-1].filename).resolve() if origin else None
        raise VariantError(import_message(e, text, path)) from None
    return variants_of(module, text, text)


def load_variant(target: str | os.PathLike[str], name: str | None = None) -> Variant:
    """One variant of `load_variants(target)`: the one called `name`, or the only one."""
    vs = load_variants(target)
    if name is None:
        if len(vs) != 1:
            raise VariantError(
                f"{os.fspath(target)}: {len(vs)} variants {[v.name for v in vs]}; pass name="
            )
        return vs[0]
    for v in vs:
        if v.name == name:
            return v
    raise VariantError(f"{os.fspath(target)}: no variant {name!r}; found {[v.name for v in vs]}")
