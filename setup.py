"""Builds the supervisor's compiled fast path (sandbox/fastpath_c/) and the agent's compiled start-up
(sandbox/spawn_c/); everything else is in pyproject.toml.

The extensions are optional: without a C compiler or Python's headers the package still installs and
the supervisor answers every call in Python and the agent is set up in Python (`faramesh-sandbox doctor`
says which is in use).
"""

from setuptools import Extension, setup

SOURCES = ["sandbox/fastpath_c/module.c", "sandbox/fastpath_c/handle.c", "sandbox/fastpath_c/task.c",
           "sandbox/fastpath_c/connect.c", "sandbox/fastpath_c/exec.c",
           "sandbox/fastpath_c/exec_stop.c", "sandbox/fastpath_c/exec_gate.c",
           "sandbox/fastpath_c/exec_stack.c"]
WARNINGS = ["-Wall", "-Wextra", "-Wno-missing-field-initializers", "-Wno-unused-parameter"]

setup(ext_modules=[Extension("sandbox._fastpath", SOURCES, depends=["sandbox/fastpath_c/fastpath.h"], optional=True,
                             extra_compile_args=["-O2", *WARNINGS]),
                   # The agent's set-up between fork and exec (sandbox/launch.py falls back to Python without it).
                   Extension("sandbox._spawn", ["sandbox/spawn_c/module.c", "sandbox/spawn_c/child.c"],
                             depends=["sandbox/spawn_c/spawn.h"], optional=True,
                             extra_compile_args=["-O2", *WARNINGS],
                             # every symbol bound at load: nothing is resolved lazily in the vfork child
                             extra_link_args=["-Wl,-z,now"])])
