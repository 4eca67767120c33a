"""``python -m hessjax.data.fetch mnist cifar10 cifar100 --dir DIR`` (:mod:`hessjax.data._fetch`).

The function of the same name is :func:`hessjax.data.fetch`. Importing this module (which
``import hessjax.data.fetch`` does, and which makes ``hessjax.data.fetch`` this module) keeps
that working: the module is callable and forwards to the function.
"""

import sys
import types

from hessjax.data._fetch import FETCHABLE, SOURCES, FetchError, Source, fetch, main

__all__ = ["FETCHABLE", "SOURCES", "FetchError", "Source", "fetch", "main"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return fetch(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
