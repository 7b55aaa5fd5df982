"""Native CPU kernels: C sources shipped in upseg/kernels, compiled on first use.

A kernel is built once per source, compiler and CPU with the system C compiler ($CC, else
cc or gcc) and kept in the cache folder ($UPSEG_CACHE, else $XDG_CACHE_HOME/upseg, else
~/.cache/upseg; where that cannot be written, a folder in the temporary directory). Where
there is no compiler, the build fails or UPSEG_NATIVE=0 is set, `load` returns None and
callers use their PyTorch code; `unavailable_reason` says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

KERNELS = Path(__file__).parent / "kernels"
FLAGS = ["-O3", "-fPIC", "-shared", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math"]
# Tried in order, the first that builds is kept: not every compiler knows -march=native or has
# OpenMP. Built with -fopenmp, a kernel loaded after torch shares torch's libgomp.so.1.
OPTIONS = (["-fopenmp", "-march=native"], ["-fopenmp"], ["-march=native"], [])

_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}
_reasons: dict[str, str] = {}


def cache_dir() -> Path:
    if os.environ.get("UPSEG_CACHE"):
        return Path(os.environ["UPSEG_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "upseg"


def enabled() -> bool:
    return os.environ.get("UPSEG_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _cpu_identity() -> str:
    """The machine and CPU features: -march=native code must not run on another CPU."""
    text = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features", "model name")):
                text += line
    except OSError:
        pass
    return text


def _kernel_dirs() -> list[Path]:
    """The cache, then a folder in the temporary directory (for a read-only home)."""
    user = f"upseg-{os.getuid()}" if hasattr(os, "getuid") else "upseg"
    return [cache_dir() / "kernels", Path(tempfile.gettempdir()) / user / "kernels"]


def _writable(folders: list[Path]) -> Path:
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            continue
    tried = ", ".join(map(str, folders))
    raise RuntimeError(f"no writable folder for built kernels (tried {tried})")


def _build(name: str, cc: str) -> Path:
    source = KERNELS / f"{name}.c"
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60)
    key = hashlib.sha256(
        source.read_bytes() + version.stdout.encode() + _cpu_identity().encode()
    ).hexdigest()[:16]
    target = next(
        (f / f"{name}-{key}.so" for f in _kernel_dirs() if (f / f"{name}-{key}.so").exists()),
        None,
    )
    if target is not None:
        return target
    folder = _writable(_kernel_dirs())
    target = folder / f"{name}-{key}.so"
    errors = []
    for options in OPTIONS:
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".so", delete=False) as handle:
            partial = Path(handle.name)
        command = [cc, *FLAGS, *options, str(source), "-o", str(partial), "-lm"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if result.returncode == 0:
            os.replace(partial, target)  # whole or absent, also with builds running side by side
            return target
        partial.unlink(missing_ok=True)
        errors.append(result.stderr.strip().splitlines()[-1:] or ["failed"])
    raise RuntimeError(f"{cc} could not build {source.name}: {errors[-1][0]}")


def load(name: str) -> ctypes.CDLL | None:
    """The compiled kernel `name` (upseg/kernels/NAME.c), or None where it cannot be had."""
    with _lock:
        if name in _loaded:
            return _loaded[name]
        library = None
        cc = compiler()
        if not enabled():
            _reasons[name] = "UPSEG_NATIVE is off"
        elif cc is None:
            _reasons[name] = "no C compiler found (set CC)"
        else:
            try:
                library = ctypes.CDLL(str(_build(name, cc)))
            except (OSError, RuntimeError, subprocess.SubprocessError) as error:
                _reasons[name] = str(error)
        _loaded[name] = library
        return library


def unavailable_reason(name: str) -> str | None:
    """Why `load(name)` gave None; None when it loaded or was not tried."""
    return _reasons.get(name)


def forget() -> None:
    """Drop what `load` remembered, so the next call looks again (tests, a changed setting)."""
    with _lock:
        _loaded.clear()
        _reasons.clear()
