"""A model of the user's own: `model = "module:function"` in a study, called as
`function(in_channels=C, image_size=H, num_classes=K, **model_args)`. Every way it can go wrong
is one FactoryError naming the user's file and line; the trial fails with it as its reason."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import nn

from hpsearch.errors import HpsearchError
from hpsearch.masking import one_line

# frames in these folders are not the user's: an error names the deepest frame outside them
_NOT_THE_USERS = tuple(str(Path(m.__file__).parent) for m in (torch, importlib))
_NOT_THE_USERS += (str(Path(__file__).parent.parent),)


class FactoryError(HpsearchError):
    """A model factory that cannot be imported, raises, or builds a model we cannot train."""


def build_factory_model(path: str, model_args: dict[str, Any],
                        image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The factory's model, checked: an nn.Module mapping a batch of images to (batch,
    num_classes) logits."""
    factory = load_factory(path)
    defined = _defined(factory, path)
    channels, height, width = image_shape
    try:
        model = factory(in_channels=channels, image_size=height, num_classes=num_classes,
                        **model_args)
    except Exception as exc:
        raise FactoryError(f"model factory {path} raised at "
                           f"{_user_frame(exc.__traceback__, defined)}"
                           f": {type(exc).__name__}: {one_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise FactoryError(f"model factory {path} ({defined}) returned "
                           f"{type(model).__name__}, not a torch.nn.Module")
    training = model.training
    model.eval()  # a probe that leaves no trace (batch-norm statistics, say)
    try:
        with torch.no_grad():
            logits = model(torch.zeros(2, channels, height, width))
    except Exception as exc:
        raise FactoryError(f"the model of factory {path} failed on a batch of 2 images of "
                           f"{channels}x{height}x{width} at "
                           f"{_user_frame(exc.__traceback__, defined)}: "
                           f"{type(exc).__name__}: {one_line(exc)}") from None
    finally:
        model.train(training)
    shape = tuple(getattr(logits, "shape", ()))
    if shape != (2, num_classes):
        raise FactoryError(f"the model of factory {path} ({defined}) maps a batch of 2 images "
                           f"of {channels}x{height}x{width} to shape {shape}; expected "
                           f"(2, {num_classes}) logits")
    return model


def check_factory_args(path: str, model_args: set[str]) -> None:
    """Before a run writes anything: the factory imports, and its signature fits the keyword
    arguments every trial passes (the data's three and [space.model_args]'s names): one
    FactoryError naming the user's file and line, not every trial failing alike."""
    factory = load_factory(path)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C callable: its trial will tell
        return
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = [p for p in signature.parameters.values() if p.kind in named]
    given = {"in_channels", "image_size", "num_classes"} | model_args
    needs = [p.name for p in params if p.default is p.empty and p.name not in given]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD
                    for p in signature.parameters.values())
    unknown = [] if takes_any else sorted(given - {p.name for p in params})
    problems = []
    if needs:
        problems.append(f"needs {', '.join(needs)}, which [space.model_args] does not give")
    if unknown:
        problems.append(f"does not take {', '.join(unknown)}, which every trial passes "
                        "(in_channels, image_size, num_classes and [space.model_args])")
    if problems:
        raise FactoryError(f"model factory {path} ({_defined(factory, path)}) "
                           f"{'; it '.join(problems)}")


def _defined(factory: Callable[..., Any], path: str) -> str:
    code = getattr(factory, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code else path


def load_factory(path: str) -> Callable[..., Any]:
    """Import "module:function" as Python would from the directory hpsearch runs in (added to
    the end of sys.path, so it shadows nothing installed) or from PYTHONPATH."""
    module_name, _, attribute = path.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise FactoryError(f"model factory {path}: no module {exc.name!r} in the directory "
                               "hpsearch runs in nor on PYTHONPATH") from None
        raise FactoryError(f"model factory {path}: importing it raised at "
                           f"{_user_frame(exc.__traceback__)}: {one_line(exc)}") from None
    except SyntaxError as exc:
        raise FactoryError(f"model factory {path}: {exc.filename}:{exc.lineno}: "
                           f"SyntaxError: {exc.msg}") from None
    except Exception as exc:
        raise FactoryError(f"model factory {path}: importing it raised at "
                           f"{_user_frame(exc.__traceback__)}: {type(exc).__name__}: "
                           f"{one_line(exc)}") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise FactoryError(f"model factory {path}: {module.__file__} has no function "
                           f"{attribute!r}")
    return factory


def _user_frame(tb: TracebackType | None, fallback: str = "?") -> str:
    """file:line of the deepest frame of the user's code in a traceback; `fallback` (the
    factory's own file:line) where none is (a missing argument, a model of torch's layers
    only)."""
    frames = [f for f in traceback.extract_tb(tb)
              if not f.filename.startswith(_NOT_THE_USERS) and not f.filename.startswith("<")]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else fallback
