"""Find the application named on the command line: ``MODULE:ATTR``, as uvicorn and gunicorn do.

``fullduplex serve myproject.main:app`` imports ``myproject.main`` and takes its ``app``
attribute (dotted attributes are followed: ``main:api.app``). With ``factory=True`` the
attribute is called with no arguments and its result is the application. The application is a
:class:`fullduplex.App` or any ASGI 3 application (a callable taking ``scope, receive, send``).

A mistake in the name (no colon, no such module, no such attribute, not an application) raises
:class:`ImportFromStringError` with a one-line message. So does a module that calls
``fullduplex.run()`` while it is imported (outside ``if __name__ == "__main__":``): that call
would serve the app on its own address before the command line could, and a SIGTERM would stop
it only for the command line's server to start. An exception raised by the module's own
code while it is imported is not a naming mistake: it propagates, traceback and all.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

__all__ = ["ImportFromStringError", "import_from_string", "load_app"]


class ImportFromStringError(Exception):
    """``MODULE:ATTR`` does not name an importable object (the message says why, in one line)."""


def import_from_string(spec: str) -> Any:
    """Import ``MODULE:ATTR`` and return the attribute.

    Args:
        spec: ``"package.module:attribute"``; the attribute may be dotted.

    Raises:
        ImportFromStringError: the string is malformed, or names a module or attribute that
            does not exist.
    """
    module_name, sep, attrs = spec.partition(":")
    if not sep or not module_name or not attrs:
        raise ImportFromStringError(f"the app must be MODULE:ATTR (e.g. main:app), got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only the module named here: a missing import *inside* it is the module's own error.
        if exc.name is None or not _is_prefix(exc.name, module_name):
            raise
        raise ImportFromStringError(f"cannot import module {module_name!r} ({exc})") from None
    target: Any = module
    for attr in attrs.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise ImportFromStringError(
                f"module {module_name!r} has no attribute {attrs!r}"
            ) from None
    return target


def _is_prefix(missing: str, module_name: str) -> bool:
    # "a.b.c" is not found because "a" or "a.b" or "a.b.c" is missing.
    return module_name == missing or module_name.startswith(missing + ".")


def load_app(spec: str, *, app_dir: str = ".", factory: bool = False) -> Any:
    """Import the application ``spec`` names, as ``fullduplex serve`` does.

    Args:
        spec: ``MODULE:ATTR``.
        app_dir: a folder put first on ``sys.path`` before importing (uvicorn's
            ``--app-dir``; the current folder by default).
        factory: call the attribute with no arguments to get the application.

    Returns:
        A :class:`fullduplex.App`, or an ASGI 3 application.

    Raises:
        ImportFromStringError: see :func:`import_from_string`; also when the object found
            is not an application (or, with ``factory``, not callable).
    """
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    with _run_refused(spec):
        target = import_from_string(spec)
    if factory:
        if not callable(target) or not _takes_no_arguments(target):
            # An App, or an ASGI application (scope, receive, send): the app itself.
            raise ImportFromStringError(
                f"--factory: {spec} is not a function of no arguments that returns the app"
                " (it looks like the app itself: drop --factory)"
            )
        target = target()
    from .asyncio.router import App

    if isinstance(target, App):
        return target
    if not callable(target):
        kind = type(target).__name__
        raise ImportFromStringError(
            f"{spec} is a {kind}, not a fullduplex.App or an ASGI application"
        )
    if not factory and _looks_like_factory(target):
        raise ImportFromStringError(
            f"{spec} takes no arguments: if it builds the app, add --factory"
        )
    return target


@contextlib.contextmanager
def _run_refused(spec: str) -> Iterator[None]:
    """While ``spec``'s module is imported, ``fullduplex.run()`` raises ImportFromStringError.

    ``fullduplex.run`` is swapped on the three modules that expose it (the package,
    ``fullduplex.asyncio`` and ``fullduplex.asyncio.server``) and put back after the import.
    """
    from . import asyncio as fd_asyncio
    from .asyncio import server

    package = sys.modules[__package__ or "fullduplex"]
    owners = (package, fd_asyncio, server)
    originals = [owner.run for owner in owners]
    module = spec.partition(":")[0]

    def refused(*args: Any, **kwargs: Any) -> NoReturn:
        raise ImportFromStringError(
            f"{module} calls fullduplex.run() when imported, and `fullduplex serve` runs the"
            ' app itself: put that call under `if __name__ == "__main__":`'
        )

    for owner in owners:
        vars(owner)["run"] = refused
    try:
        yield
    finally:
        for owner, original in zip(owners, originals, strict=True):
            vars(owner)["run"] = original


def _looks_like_factory(target: Any) -> bool:
    # An ASGI 3 application takes (scope, receive, send); a function of no arguments is the
    # usual create_app() named without --factory.
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return False
    return not signature.parameters


def _takes_no_arguments(target: Any) -> bool:
    # What --factory calls: create_app(), or one whose parameters all have defaults. A
    # signature Python cannot read (some builtins) is given the benefit of the doubt.
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return True
    try:
        signature.bind()
    except TypeError:
        return False
    return True
