"""Build script for the ``tcdcn_ext._C`` extension.

Install torch first, then ``pip install --no-build-isolation .`` so the extension is compiled against the
torch that will import it. Configuration comes from environment variables only:

``FORCE_CUDA=1``        build the CUDA kernels even where no GPU is visible (needs nvcc / ``CUDA_HOME``).
``TCDCN_FORCE_CPU=1``   never build CUDA, even with a CUDA torch and a GPU.
``DEBUG=1``             ``-O0 -g``; with ``TCDCN_SANITIZE=1`` also ``-fsanitize=address,undefined``.
``NVCC_FLAGS``          extra flags for nvcc (space separated).
``TORCH_CUDA_ARCH_LIST`` CUDA architectures (torch's own switch; e.g. ``9.0`` for Hopper).
``MAX_JOBS``            parallel compile jobs (torch's own switch).

The per-ISA kernels in ``csrc/cpu/simd`` include no torch header and are each compiled with their own
instruction-set flags (never ``-march=native``, never a global AVX flag), so the wheel runs on any x86-64 CPU
and picks the best kernel at run time (``tcdcn_ext.ops.cpu_isa()``).
"""

from __future__ import annotations

import glob
import os
import platform
import sys

from setuptools import setup

import torch
from torch.utils import cpp_extension
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


DEBUG = _env_flag("DEBUG")
SANITIZE = _env_flag("TCDCN_SANITIZE")
IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")

# Per-ISA flags for the torch-free kernel translation units (file suffix -> flags).
SIMD_FLAGS = {
    "_ref.cpp": [],
    "_avx2.cpp": ["-mavx2", "-mfma", "-mf16c"],
    "_avx512.cpp": ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mfma", "-mf16c"],
    "_vnni.cpp": ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx512vnni", "-mfma", "-mf16c"],
    "_amx.cpp": ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx512vnni", "-mavx512bf16", "-mamx-tile",
                 "-mamx-bf16", "-mamx-int8", "-mfma", "-mf16c"],
}


def _torch_uses_openmp() -> bool:
    """Whether torch's intra-op thread pool (ATen/Parallel) is its OpenMP backend."""
    info = torch.__config__.parallel_info()
    return "OpenMP" in info and "native thread pool" not in info.lower()


def _want_cuda() -> tuple[bool, str]:
    """Decide whether to build the CUDA kernels, and say why."""
    if _env_flag("TCDCN_FORCE_CPU"):
        return False, "TCDCN_FORCE_CPU=1"
    if _env_flag("FORCE_CUDA"):
        return True, "FORCE_CUDA=1"
    if torch.version.cuda is None:
        return False, "torch is a CPU build"
    if cpp_extension.CUDA_HOME is None:
        return False, "torch has CUDA but no CUDA toolkit (CUDA_HOME / nvcc) was found"
    # A CUDA torch on a GPU-less host crashes in _get_cuda_arch_flags unless the arch list is given.
    if torch.cuda.is_available() or os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return True, "torch has CUDA and a GPU or TORCH_CUDA_ARCH_LIST is present"
    return False, "no GPU visible and TORCH_CUDA_ARCH_LIST unset"


def _cuda_include_and_link() -> tuple[list[str], list[str], list[str]]:
    """Extra include dirs / library dirs / libraries for CUDA toolkits installed from pip.

    pip's ``cuda-toolkit`` lacks the cuBLAS/cuSPARSE/cuSOLVER headers that torch's CUDA headers include: those come
    with torch's ``nvidia-*`` dependency wheels, so add their include folders. It also ships only
    ``libcudart.so.<major>``, so ``-lcudart`` does not resolve: link that file by its full name instead.
    """
    includes: list[str] = []
    lib_dirs: list[str] = []
    extra_link: list[str] = []
    site_dirs = {os.path.dirname(os.path.dirname(torch.__file__))}
    for site in sorted(site_dirs):
        for inc in sorted(glob.glob(os.path.join(site, "nvidia", "*", "include"))):
            includes.append(inc)
        for inc in sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "include"))):
            if inc not in includes:
                includes.append(inc)
    home = cpp_extension.CUDA_HOME or ""
    for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib")):
        d = os.path.join(home, sub)
        if os.path.isdir(d):
            lib_dirs.append(d)
            if not glob.glob(os.path.join(d, "libcudart.so")):
                versioned = sorted(glob.glob(os.path.join(d, "libcudart.so.*")))
                if versioned:
                    extra_link.append(versioned[0])
    return includes, lib_dirs, extra_link


def _up_to_date(obj: str, src: str, args: list[str]) -> bool:
    """Whether a per-ISA kernel object is newer than its source and every header it may include (the torch-free
    headers under csrc/cpu/simd, csrc/cpu and csrc, e.g. csrc/epilogue.h), and was compiled with the same flags."""
    try:
        with open(obj + ".flags") as f:
            if f.read() != " ".join(args):
                return False
        built = os.path.getmtime(obj)
    except OSError:
        return False
    deps = [src] + glob.glob(os.path.join(CSRC, "cpu", "simd", "*.h")) + glob.glob(os.path.join(CSRC, "cpu", "*.h"))
    deps += glob.glob(os.path.join(CSRC, "*.h"))
    return all(os.path.getmtime(d) <= built for d in deps)


class TcdcnBuildExtension(BuildExtension):
    """BuildExtension that first compiles the per-ISA kernel files, each with its own flags."""

    def build_extensions(self) -> None:
        for ext in self.extensions:
            simd_sources = getattr(ext, "_tcdcn_simd_sources", [])
            objects: list[str] = []
            for src in simd_sources:
                flags = next(f for suffix, f in SIMD_FLAGS.items() if src.endswith(suffix))
                base = ["-O0", "-g"] if DEBUG else ["-O3"]
                if SANITIZE:
                    base += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
                # -ffp-contract=fast lets a*b+c become FMA in the vector kernels; -fno-math-errno keeps sqrt/exp inline.
                args = base + ["-std=c++17", "-fPIC", "-fvisibility=hidden", "-ffp-contract=fast", "-fno-math-errno"]
                args += flags
                obj = self.compiler.object_filenames([src], output_dir=self.build_temp)[0]
                if _up_to_date(obj, src, args):  # an in-place rebuild recompiles only what changed
                    objects.append(obj)
                    continue
                objects += self.compiler.compile(
                    [src], output_dir=self.build_temp, include_dirs=[CSRC], extra_postargs=args
                )
                with open(obj + ".flags", "w") as f:
                    f.write(" ".join(args))
            ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extensions()


def _extension():
    with_cuda, why = _want_cuda()
    all_cpu = sorted(glob.glob(os.path.join(CSRC, "*.cpp")) + glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))
    simd = sorted(glob.glob(os.path.join(CSRC, "cpu", "simd", "*.cpp")))
    if not IS_X86:
        simd = [s for s in simd if s.endswith("_ref.cpp")]
    cuda_src = sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu"))) if with_cuda else []

    opt = ["-O0", "-g"] if DEBUG else ["-O3"]
    cxx = opt + ["-fvisibility=hidden"]  # torch adds its own -std (C++20 since 2.10)
    link: list[str] = []
    # at::parallel_for is a header template: with torch's OpenMP backend it only runs in parallel when the caller is
    # compiled with OpenMP, otherwise every op silently runs on one thread (tcdcn_ext._C.with_openmp tells).
    openmp = _torch_uses_openmp() and sys.platform.startswith("linux")
    if openmp:
        cxx += ["-fopenmp"]
        link += ["-fopenmp"]
    if SANITIZE:
        cxx += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
        link += ["-fsanitize=address,undefined"]
    macros = [("TCDCN_HAVE_X86_SIMD", "1" if IS_X86 else "0")]
    include_dirs = [os.path.abspath(CSRC)]
    extra_compile_args: dict[str, list[str]] = {"cxx": cxx}
    kwargs: dict = {}
    if with_cuda:
        inc, lib_dirs, extra_link = _cuda_include_and_link()
        include_dirs += inc
        macros.append(("TCDCN_WITH_CUDA", "1"))
        nvcc = opt + ["--expt-relaxed-constexpr", "-lineinfo"]
        nvcc += os.environ.get("NVCC_FLAGS", "").split()
        extra_compile_args["nvcc"] = nvcc
        kwargs["library_dirs"] = lib_dirs
        link += extra_link
        ext_cls = CUDAExtension
    else:
        ext_cls = CppExtension

    print("tcdcn_ext build configuration:", file=sys.stderr)
    print(f"  torch {torch.__version__} (CUDA {torch.version.cuda}), python {platform.python_version()}", file=sys.stderr)
    print(f"  CUDA kernels: {'yes' if with_cuda else 'no'} ({why})", file=sys.stderr)
    if with_cuda:
        print(f"  CUDA_HOME={cpp_extension.CUDA_HOME} TORCH_CUDA_ARCH_LIST="
              f"{os.environ.get('TORCH_CUDA_ARCH_LIST', '(torch default)')}", file=sys.stderr)
    print(f"  CPU SIMD kernels: {[os.path.basename(s) for s in simd]}", file=sys.stderr)
    print(f"  OpenMP (for at::parallel_for): {'yes' if openmp else 'no'}", file=sys.stderr)
    print(f"  DEBUG={int(DEBUG)} SANITIZE={int(SANITIZE)} MAX_JOBS={os.environ.get('MAX_JOBS', '(auto)')}",
          file=sys.stderr)

    ext = ext_cls(
        name="tcdcn_ext._C",
        sources=all_cpu + cuda_src,
        include_dirs=include_dirs,
        define_macros=macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=link,
        **kwargs,
    )
    ext._tcdcn_simd_sources = simd  # compiled separately by TcdcnBuildExtension
    # Relink (and recompile) when a per-ISA kernel source or any header changed: setuptools compares only `sources`
    # and `depends` with the built module, and the per-ISA objects reach the link as extra objects.
    ext.depends = sorted(set(simd + glob.glob(os.path.join(CSRC, "**", "*.h"), recursive=True)))
    if with_cuda and extra_link and "cudart" in ext.libraries:
        # CUDAExtension always adds -lcudart, which a pip toolkit (libcudart.so.<major> only) cannot resolve;
        # the versioned file is linked by its full path instead (see _cuda_include_and_link).
        ext.libraries.remove("cudart")
    return ext


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": TcdcnBuildExtension.with_options(use_ninja=True)},
)
