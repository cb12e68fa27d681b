"""Build script: the Cython backend is an optional compiled extension.

The extension ``numgru._cython_kernels`` is built whenever a C compiler and
Cython are available, with OpenMP when the compiler supports it (checked by
compiling and linking a small test program). A build that fails for any
reason prints a warning and leaves a working pure-Python install (the Numba
and numpy backends).

Environment variables:

``NUMGRU_NO_CYTHON=1``
    Do not build the extension.
``NUMGRU_NO_OPENMP=1``
    Build without OpenMP (serial kernels, same results).
``NUMGRU_NATIVE=1``
    Compile for the build machine's CPU (``-march=native``); the result may
    not run on other x86-64 machines.
"""

import os
import shutil
import sys
import tempfile
import textwrap

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

EXT_NAME = "numgru._cython_kernels"
PYX_SOURCE = os.path.join("numgru", "_cython_kernels.pyx")

OPENMP_TEST_PROGRAM = textwrap.dedent("""\
    #include <omp.h>
    #include <stdio.h>

    int main(void) {
        int n = 0;
        #pragma omp parallel num_threads(2) reduction(+:n)
        n += 1;
        printf("%d\\n", n > 0 && omp_get_max_threads() > 0);
        return 0;
    }
    """)


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _warn(message):
    bar = "*" * 72
    print(f"\n{bar}\nWARNING: {message}\n{bar}\n", file=sys.stderr, flush=True)


def _openmp_flags(compiler):
    """Compile and link flags enabling OpenMP for this compiler, as a pair."""
    if compiler.compiler_type == "msvc":
        return ["/openmp"], []
    if sys.platform == "darwin":
        return ["-Xpreprocessor", "-fopenmp"], ["-lomp"]
    return ["-fopenmp"], ["-fopenmp"]


def _check_openmp(compiler):
    """Return (compile_args, link_args) for OpenMP, or None if unsupported.

    A small OpenMP program is compiled and linked with the compiler that
    will build the extension; any failure means no OpenMP.
    """
    compile_args, link_args = _openmp_flags(compiler)
    tmp = tempfile.mkdtemp(prefix="numgru_openmp_")
    try:
        source = os.path.join(tmp, "test_openmp.c")
        with open(source, "w") as f:
            f.write(OPENMP_TEST_PROGRAM)
        objects = compiler.compile([source], output_dir=tmp,
                                   extra_postargs=compile_args)
        compiler.link_executable(objects, "test_openmp", output_dir=tmp,
                                 extra_postargs=link_args)
    except Exception as exc:  # compiler missing, flag unknown, no omp.h ...
        print(f"numgru: OpenMP not available ({type(exc).__name__}: {exc})",
              flush=True)
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return compile_args, link_args


def _check_flag(compiler, flag):
    """Whether the compiler accepts ``flag`` on a trivial source file."""
    tmp = tempfile.mkdtemp(prefix="numgru_flag_")
    try:
        source = os.path.join(tmp, "test_flag.c")
        with open(source, "w") as f:
            f.write("int main(void) { return 0; }\n")
        compiler.compile([source], output_dir=tmp, extra_postargs=[flag])
        return True
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class OptionalBuildExt(build_ext):
    """``build_ext`` that cythonizes lazily and never fails the install."""

    def run(self):
        try:
            from Cython.Build import cythonize
        except ImportError:
            _warn("Cython is not installed: the 'cython' backend is not "
                  "built; numgru uses its other backends.")
            self.extensions = []
            return
        try:
            # cythonize to C, keeping the Extension objects setuptools set up
            for ext in self.extensions:
                (cythonized,) = cythonize(
                    [Extension(ext.name, list(ext.sources))],
                    compiler_directives={"language_level": 3},
                    quiet=True,
                )
                ext.sources = list(cythonized.sources)
            super().run()
        except Exception as exc:
            _warn(f"building the 'cython' backend failed "
                  f"({type(exc).__name__}: {exc}); numgru works without it, "
                  f"using its other backends.")

    def build_extensions(self):
        compiler = self.compiler
        if compiler.compiler_type == "msvc":
            compile_args, link_args = ["/O2", "/fp:precise"], []
        else:
            # -fno-trapping-math lets GCC vectorise the branch-free clamps of
            # the float32 activations with AVX2 (it otherwise keeps them as
            # branches, one value at a time: the AVX2 forward was 2x slower);
            # it changes no value, only what may happen to FP exception flags
            # -falign-loops=64 starts every loop on a 64-byte boundary: the
            # speed of the matrix products' inner loops otherwise depended
            # on where the rest of the code put them. On an AVX2 machine, 2
            # threads, float32, against the same source without it: forward
            # 1.1x to 1.15x and backward 1.06x to 1.46x faster at the
            # benchmark shapes (large forward unchanged); same values.
            compile_args = ["-O3", "-ffp-contract=off"]
            for flag in ("-fno-trapping-math", "-falign-loops=64"):
                if _check_flag(compiler, flag):
                    compile_args.append(flag)
            link_args = []
            if _env_flag("NUMGRU_NATIVE"):
                compile_args.append("-march=native")
            for flag in ("-Wno-unused-function", "-Wno-unreachable-code",
                         "-Wno-misleading-indentation", "-Wno-psabi"):
                if _check_flag(compiler, flag):
                    compile_args.append(flag)
        openmp = None if _env_flag("NUMGRU_NO_OPENMP") else _check_openmp(compiler)
        if openmp is not None:
            compile_args += openmp[0]
            link_args += openmp[1]
        print(f"numgru: building {EXT_NAME} "
              f"{'with' if openmp else 'without'} OpenMP", flush=True)
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args) + compile_args
            ext.extra_link_args = list(ext.extra_link_args) + link_args
        super().build_extensions()

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            _warn(f"building {ext.name} failed ({type(exc).__name__}: {exc}); "
                  f"numgru works without it, using its other backends.")

    def get_outputs(self):
        # only report what was actually built, so that installs and
        # editable installs do not look for a missing extension
        return [path for path in super().get_outputs() if os.path.exists(path)]


def _extensions():
    if _env_flag("NUMGRU_NO_CYTHON"):
        print("numgru: NUMGRU_NO_CYTHON is set, not building the 'cython' "
              "backend", flush=True)
        return []
    return [Extension(EXT_NAME, [PYX_SOURCE])]


setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
)
