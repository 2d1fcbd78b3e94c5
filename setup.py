"""Build libpmemmetrics with csrc/Makefile, then the CFFI extension that links it.

Metadata lives in pyproject.toml.  The library is compiled by ``make -C csrc``
(the Makefile holds the sources, the warning flags and the soname; CI checks
the same build with -Werror), with the user's ``CC``, ``CPPFLAGS``, ``CFLAGS``
and ``LDFLAGS`` from the environment, or setuptools' compiler when ``CC`` is
unset.  The library and its header are then placed inside the package
(pmem_metrics/lib, pmem_metrics/include) so that an installed package carries
them, and the extension finds the library through its $ORIGIN/lib rpath.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")
SOURCE_PACKAGE = os.path.join(HERE, "pmem_metrics")
DEV_NAME = "libpmemmetrics.so"  # what -lpmemmetrics finds


def make(*args: str) -> str:
    return subprocess.run(
        ["make", "--no-print-directory", "-s", "-C", CSRC, *args],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout


def soname() -> str:
    """The library's soname, as the Makefile defines it."""
    return make("print-soname").strip()


def packaged(build: str) -> dict[str, str]:
    """What goes into the package: its path there -> the file built in *build*.

    A wheel cannot hold symlinks: the library is shipped under its soname,
    which the extension (and any C code linked with ``--libs``) loads, and a
    copy as libpmemmetrics.so, which ``-lpmemmetrics`` finds when linking
    (the linker records the soname, so that copy is never what gets loaded).
    """
    name = soname()
    return {
        f"lib/{name}": os.path.join(build, name),
        f"lib/{DEV_NAME}": os.path.join(build, name),
        "include/pmem_metrics.h": os.path.join(CSRC, "pmem_metrics.h"),
    }


class BuildExtWithLibrary(build_ext):
    """Build libpmemmetrics.so.N next to where the extension goes, then the extension.

    The binaries are also mirrored into the source package, as ``--inplace``
    would put them, so ``python -m pmem_metrics`` works from the checkout root
    too (where the source folder shadows the installed package).
    """

    def make_variables(self) -> list[str]:
        env = os.environ
        cc = env.get("CC") or self.compiler.compiler_so[0]
        names = ("CPPFLAGS", "CFLAGS", "LDFLAGS")
        return [f"CC={cc}", *(f"{name}={env[name]}" for name in names if name in env)]

    def build_extensions(self) -> None:
        pkg = os.path.dirname(self.get_ext_fullpath(self.extensions[0].name))
        build = os.path.join(os.path.abspath(self.build_temp), "csrc")
        make(f"B={build}", "shared", *self.make_variables())
        files = packaged(build)
        for target, source in files.items():
            path = os.path.join(pkg, target)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            shutil.copyfile(source, path)  # the file a symlink names, not the link
            shutil.copymode(source, path)
        for ext in self.extensions:
            ext.library_dirs.append(os.path.join(pkg, "lib"))
            ext.depends.append(os.path.join(pkg, f"lib/{DEV_NAME}"))  # relink a newer library
        super().build_extensions()
        self._built = {
            "pkg": pkg,
            "files": [os.path.join(pkg, f) for f in files]
            + [self.get_ext_fullpath(ext.name) for ext in self.extensions],
        }

    def run(self) -> None:
        super().run()
        built = getattr(self, "_built", None)
        if built is None or os.path.samefile(built["pkg"], SOURCE_PACKAGE):
            return
        for path in built["files"]:
            target = os.path.join(SOURCE_PACKAGE, os.path.relpath(path, built["pkg"]))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(path, target)

    def get_outputs(self) -> list[str]:
        pkg = os.path.dirname(self.get_ext_fullpath(self.extensions[0].name))
        return [*super().get_outputs(), *(os.path.join(pkg, f) for f in packaged(""))]


setup(
    cffi_modules=["pmem_metrics/_ffi_build.py:ffi"],
    ext_package="pmem_metrics",
    cmdclass={"build_ext": BuildExtWithLibrary},
    zip_safe=False,
)
