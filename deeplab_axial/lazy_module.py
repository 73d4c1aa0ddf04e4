"""Modules loaded on first use, so that a command-line tool parses its flags (and answers --help) before TensorFlow,
which takes 5-25 s to import, is loaded."""

import importlib
import sys
import types


class LazyModule(types.ModuleType):
    """Stands for the module `name`; the first attribute read imports it (`importlib.import_module`)."""

    def __getattr__(self, attribute: str):
        return getattr(importlib.import_module(self.__name__), attribute)


def load(name: str) -> types.ModuleType:
    """The module `name` if it is already imported, else a `LazyModule` for it."""
    return sys.modules.get(name) or LazyModule(name)
