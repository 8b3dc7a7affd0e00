"""The one part of diag in C: the culprit search's walk (``diag/_walk.c``).

Optional: where no C compiler or Python headers are found, the install goes on without it and
``diag.dominators`` walks the heap in Python (the same results, about twice the pause). Every
other setting lives in pyproject.toml.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("diag._walk", sources=["diag/_walk.c"], optional=True)])
