import os
from concurrent.futures import ThreadPoolExecutor

from setuptools import setup
from setuptools.command.build_ext import build_ext


class ParallelBuildExt(build_ext):
    """Compiles the C files of the extension side by side, one per core: setuptools builds
    separate extensions in parallel (--parallel) but the sources of one extension one by one."""

    def build_extension(self, ext):
        serial = self.compiler.compile
        jobs = max(1, min(len(ext.sources), os.cpu_count() or 1))

        def compile_in_parallel(sources, *args, **kwargs):
            if jobs == 1 or len(sources) < 2:
                return serial(sources, *args, **kwargs)
            # the longest compiles first, so the last one to start is a short one
            order = sorted(sources, key=lambda s: -os.path.getsize(s) if os.path.exists(s) else 0)
            with ThreadPoolExecutor(jobs) as pool:
                done = dict(zip(order, pool.map(lambda s: serial([s], *args, **kwargs), order)))
            return [obj for s in sources for obj in done[s]]

        self.compiler.compile = compile_in_parallel
        try:
            super().build_extension(ext)
        finally:
            self.compiler.compile = serial


# Metadata lives in pyproject.toml; this file only wires the cffi extension in.
setup(cffi_modules=["pyautodiff/_build.py:ffibuilder"], cmdclass={"build_ext": ParallelBuildExt})
