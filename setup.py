"""Builds the supervisor's compiled fast path (sandbox/fastpath_c/), the agent's compiled start-up
(sandbox/spawn_c/) and the sandbox's init program (sandbox/init_c/, linked as sandbox/_init);
everything else is in pyproject.toml.

All three are optional: without a C compiler or Python's headers the package still installs, the
supervisor answers every call in Python, and init and the agent are set up in Python
(`faramesh-sandbox doctor` says which is in use).
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import BaseError, CCompilerError

SOURCES = ["sandbox/fastpath_c/module.c", "sandbox/fastpath_c/handle.c", "sandbox/fastpath_c/task.c",
           "sandbox/fastpath_c/connect.c", "sandbox/fastpath_c/exec.c",
           "sandbox/fastpath_c/exec_stop.c", "sandbox/fastpath_c/exec_gate.c",
           "sandbox/fastpath_c/exec_stack.c", "sandbox/fastpath_c/cpu_hold.c"]
INIT_SOURCES = ["sandbox/init_c/main.c", "sandbox/init_c/plan.c", "sandbox/init_c/setup.c", "sandbox/spawn_c/child.c",
                "sandbox/spawn_c/stack.c"]
INIT_PROGRAM = "_init"  # sandbox/_init: sandbox/init_spawn.py runs it
WARNINGS = ["-Wall", "-Wextra", "-Wno-missing-field-initializers", "-Wno-unused-parameter"]


class BuildWithInit(build_ext):
    """The extensions, then init: a program of its own, linked statically where the C library
    allows (no dynamic loader at each sandbox's start)."""

    def run(self):
        super().run()
        package = "sandbox" if self.inplace else os.path.join(self.build_lib, "sandbox")
        try:
            objects = self.compiler.compile(INIT_SOURCES, output_dir=self.build_temp,
                                            extra_postargs=["-O2", *WARNINGS])
            try:
                self.compiler.link_executable(objects, INIT_PROGRAM, output_dir=package, extra_postargs=["-static"])
            except (CCompilerError, BaseError):
                self.compiler.link_executable(objects, INIT_PROGRAM, output_dir=package)
        except (CCompilerError, BaseError) as err:
            self.warn(f"sandbox/{INIT_PROGRAM} was not built ({err}): init will run in Python")

    def get_outputs(self):
        program = os.path.join(self.build_lib, "sandbox", INIT_PROGRAM)
        return super().get_outputs() + ([program] if os.path.exists(program) else [])


setup(cmdclass={"build_ext": BuildWithInit},
      ext_modules=[Extension("sandbox._fastpath", SOURCES, depends=["sandbox/fastpath_c/fastpath.h"], optional=True,
                             extra_compile_args=["-O2", *WARNINGS]),
                   # The agent's set-up between fork and exec (sandbox/launch.py falls back to Python without it).
                   Extension("sandbox._spawn", ["sandbox/spawn_c/module.c", "sandbox/spawn_c/child.c",
                                                "sandbox/spawn_c/init_start.c", "sandbox/spawn_c/stack.c"],
                             depends=["sandbox/spawn_c/spawn.h", "sandbox/spawn_c/raw_syscall.h",
                                      "sandbox/init_c/init.h"], optional=True,
                             extra_compile_args=["-O2", *WARNINGS],
                             # every symbol bound at load: nothing is resolved lazily in the vfork child
                             extra_link_args=["-Wl,-z,now"])])
