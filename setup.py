"""Builds the supervisor's compiled fast path (sandbox/fastpath_c/); everything else is in pyproject.toml.

The extension is optional: without a C compiler or Python's headers the package still installs and
the supervisor answers every call in Python (`faramesh-sandbox doctor` says which is in use).
"""

from setuptools import Extension, setup

SOURCES = ["sandbox/fastpath_c/module.c", "sandbox/fastpath_c/handle.c", "sandbox/fastpath_c/task.c"]
WARNINGS = ["-Wall", "-Wextra", "-Wno-missing-field-initializers", "-Wno-unused-parameter"]

setup(ext_modules=[Extension("sandbox._fastpath", SOURCES, depends=["sandbox/fastpath_c/fastpath.h"], optional=True,
                             extra_compile_args=["-O2", *WARNINGS])])
