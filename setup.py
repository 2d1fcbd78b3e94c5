"""Build libpmemmetrics.so from csrc/, then the CFFI extension that links it.

Metadata lives in pyproject.toml.  The shared library and its header are
placed inside the package (pmem_metrics/lib, pmem_metrics/include) so that an
installed package carries them, and the extension finds the library through
its $ORIGIN/lib rpath.
"""

import glob
import os
import shutil

from setuptools import setup
from setuptools.command.build_ext import build_ext

CSRC = "csrc"
SOURCE_PACKAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pmem_metrics")
C_FLAGS = ["-std=c11", "-O2", "-pthread", "-Wall", "-Wextra"]


class BuildExtWithLibrary(build_ext):
    """Build libpmemmetrics.so next to where the extension goes, then the extension.

    The binaries are also mirrored into the source package, as ``--inplace``
    would put them, so ``python -m pmem_metrics`` works from the checkout root
    too (where the source folder shadows the installed package).
    """

    def build_extensions(self) -> None:
        pkg = os.path.dirname(self.get_ext_fullpath(self.extensions[0].name))
        lib = os.path.join(pkg, "lib", "libpmemmetrics.so")
        header = os.path.join(pkg, "include", "pmem_metrics.h")
        objects = self.compiler.compile(
            sorted(glob.glob(os.path.join(CSRC, "*.c"))),
            output_dir=self.build_temp,
            extra_postargs=C_FLAGS,
        )
        # A plain C link: Python's LDSHARED would add the interpreter's own rpath.
        os.makedirs(os.path.dirname(lib), exist_ok=True)
        cc = self.compiler.compiler_so[0]
        soname = "-Wl,-soname,libpmemmetrics.so"
        self.compiler.spawn([cc, "-shared", "-pthread", soname, *objects, "-o", lib])
        os.makedirs(os.path.dirname(header), exist_ok=True)
        shutil.copy2(os.path.join(CSRC, "pmem_metrics.h"), header)
        for ext in self.extensions:
            ext.library_dirs.append(os.path.dirname(lib))
        super().build_extensions()
        self._built = {
            "pkg": pkg,
            "files": [lib, header] + [self.get_ext_fullpath(ext.name) for ext in self.extensions],
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

    def get_outputs(self) -> list:
        pkg = os.path.dirname(self.get_ext_fullpath(self.extensions[0].name))
        return [
            *super().get_outputs(),
            os.path.join(pkg, "lib", "libpmemmetrics.so"),
            os.path.join(pkg, "include", "pmem_metrics.h"),
        ]


setup(
    cffi_modules=["pmem_metrics/_ffi_build.py:ffi"],
    ext_package="pmem_metrics",
    cmdclass={"build_ext": BuildExtWithLibrary},
    zip_safe=False,
)
