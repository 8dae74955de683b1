"""Users' plugin modules: imported with every failure told in one line, and blamed for what they raise later.

A plugin is a module named in ``plugins`` (comma-separated) that registers
components when imported, or the module of a ``package.module:Factory`` model.
Whatever goes wrong in one, at import (an ImportError, a SyntaxError, any
exception, a name registered twice, ``sys.exit``) or inside one of its
components during a run, is a :class:`PluginError`: one line naming the
plugin, the error and the plugin's line, with the original exception chained
as its cause (the CLI prints the traceback with ``--debug`` or
``BYZRSA_DEBUG=1``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from types import TracebackType

from byzrsa.errors import ByzrsaError, ConfigError

__all__ = ["PluginError", "import_plugin_modules", "plugin_modules", "blame"]


class PluginError(ByzrsaError):
    """A plugin failed: at import, or inside one of its components during a run."""


def plugin_modules(plugins: str, model: str = "") -> list[str]:
    """The module names a config brings in: its ``plugins`` and the module of a ``module:Factory`` model."""
    names = [n.strip() for n in plugins.split(",") if n.strip()]
    if ":" in model:
        names.append(model.partition(":")[0])
    return names


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} ({os.path.basename(exc.filename or '?')}, line {exc.lineno})"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def import_plugin_modules(plugins: str) -> None:
    """Import every plugin module; a failure is a one-line :class:`ConfigError`/:class:`PluginError`."""
    for name in filter(None, (n.strip() for n in plugins.split(","))):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name or name.startswith(f"{exc.name}."):  # the plugin itself is not there
                raise ConfigError(f"plugin {name!r} cannot be imported: {exc}; check the name and that its "
                                  "folder is on PYTHONPATH") from exc
            raise PluginError(f"plugin {name!r} failed while importing: {_describe(exc)}{_where(exc, [name])}") from exc
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - whatever a user's module raises, told in one line
            sys.modules.pop(name, None)  # half-imported: a later import runs it again rather than using the husk
            raise PluginError(f"plugin {name!r} failed while importing: {_describe(exc)}{_where(exc, [name])}") from exc


def _files(names: list[str]) -> dict[str, str]:
    """Source file or package folder of each imported module, for matching traceback frames."""
    out = {}
    for name in names:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path is None:  # a module whose import failed is no longer in sys.modules: where it would load from
            try:
                spec = importlib.util.find_spec(name)
                path = spec.origin if spec is not None else None
            except (ImportError, ValueError):
                path = None
        if path:
            path = os.path.abspath(path)
            out[name] = os.path.dirname(path) + os.sep if path.endswith("__init__.py") else path
    return out


def _frames(tb: TracebackType | None) -> list[tuple[str, int]]:
    return [(frame.filename, frame.lineno or 0) for frame in traceback.extract_tb(tb)] if tb else []


def _where(exc: BaseException, names: list[str]) -> str:
    files = _files(names)
    for filename, line in reversed(_frames(exc.__traceback__)):
        path = os.path.abspath(filename)
        if any(path == f or (f.endswith(os.sep) and path.startswith(f)) for f in files.values()):
            return f" ({os.path.basename(path)}, line {line})"
    return ""


def blame(exc: BaseException, plugins: str, model: str = "") -> PluginError | None:
    """A :class:`PluginError` if ``exc`` was raised inside a plugin's code (the innermost such frame), else None.

    Errors byzrsa itself raises on a user's input (:class:`ByzrsaError`) and
    Ctrl-C are never blamed on a plugin.
    """
    if isinstance(exc, (ByzrsaError, KeyboardInterrupt)):
        return None
    names = plugin_modules(plugins, model)
    if not names:
        return None
    files = _files(names)
    for filename, line in reversed(_frames(exc.__traceback__)):
        path = os.path.abspath(filename)
        for name, f in files.items():
            if path == f or (f.endswith(os.sep) and path.startswith(f)):
                return PluginError(f"plugin {name!r} failed during the run: {_describe(exc)} "
                                   f"({os.path.basename(path)}, line {line})")
    return None
