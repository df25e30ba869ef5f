"""Builds the supervisor's compiled fast path (sandbox/fastpath_c/), the agent's compiled start-up
(sandbox/spawn_c/), the sandbox's init program (sandbox/init_c/, linked as sandbox/_init) and the
service's client (launcher/client_c/, linked as launcher/_client); everything else is in
pyproject.toml.

All are optional: without a C compiler or Python's headers the package still installs, the
supervisor answers every call in Python, and init and the agent are set up in Python
(`faramesh-sandbox doctor` says which is in use); without launcher/_client there is no compiled
client for `faramesh-sandbox serve`.
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
CLIENT_SOURCES = ["launcher/client_c/client.c"]
WARNINGS = ["-Wall", "-Wextra", "-Wno-missing-field-initializers", "-Wno-unused-parameter"]
# Programs of their own: (package, name, sources, what runs without it).
# sandbox/_init: sandbox/init_spawn.py runs it. launcher/_client: hands one command to `serve`.
PROGRAMS = [("sandbox", "_init", INIT_SOURCES, "init will run in Python"),
            ("launcher", "_client", CLIENT_SOURCES, "no compiled client for `faramesh-sandbox serve`")]


class BuildWithInit(build_ext):
    """The extensions, then the programs, each linked statically where the C library allows (no
    dynamic loader at each start: a sandbox's init, a client that must cost well under 1 ms)."""

    def run(self):
        super().run()
        for package, name, sources, fallback in PROGRAMS:
            self._build_program(package, name, sources, fallback)

    def _build_program(self, package, name, sources, fallback):
        output_dir = package if self.inplace else os.path.join(self.build_lib, package)
        try:
            objects = self.compiler.compile(sources, output_dir=self.build_temp, extra_postargs=["-O2", *WARNINGS])
            try:
                self.compiler.link_executable(objects, name, output_dir=output_dir, extra_postargs=["-static"])
            except (CCompilerError, BaseError):
                self.compiler.link_executable(objects, name, output_dir=output_dir)
        except (CCompilerError, BaseError) as err:
            self.warn(f"{package}/{name} was not built ({err}): {fallback}")

    def get_outputs(self):
        programs = [os.path.join(self.build_lib, package, name) for package, name, _, _ in PROGRAMS]
        return super().get_outputs() + [program for program in programs if os.path.exists(program)]


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
