"""Native CPU kernels: C sources shipped in upseg/losses/kernels, compiled on first use.

A kernel is built once per source, compiler, flags and machine with the system C compiler
($CC, else cc or gcc) and kept in the cache folder ($UPSEG_CACHE, else
$XDG_CACHE_HOME/upseg, else ~/.cache/upseg; where that cannot be written, a private folder
of the user's in the temporary directory). Where
there is no compiler, the build fails or UPSEG_NATIVE=0 is set, `load` returns None and
callers use their PyTorch code; `unavailable_reason` says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import stat
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


def compiler() -> list[str] | None:
    """$CC (which may carry arguments, as in "ccache gcc"), else cc or gcc on the PATH."""
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])
    found = shutil.which("cc") or shutil.which("gcc")
    return [found] if found else None


def _machine_identity() -> str:
    """The host and its CPU features: -march=native code must not run on another CPU, also
    where a home folder is shared between machines."""
    text = platform.machine() + platform.node()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features", "model name")):
                text += line
    except OSError:
        pass
    return text


def _private_temp_dir() -> Path | None:
    """A folder of this user's in the temporary directory, readable by nobody else; None where
    one cannot be had (another user's folder of that name is never used)."""
    if not hasattr(os, "getuid"):
        return None
    folder = Path(tempfile.gettempdir()) / f"upseg-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        return None
    if info.st_mode & 0o077:
        try:
            folder.chmod(0o700)  # ours, but opened to others some other way
        except OSError:
            return None
    return folder


def _kernel_dir() -> Path:
    """The cache's kernels folder; only where it cannot be written, the private one in the
    temporary directory (for a read-only home)."""
    cache = cache_dir() / "kernels"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if os.access(cache, os.W_OK):
            return cache
    except OSError:
        pass
    private = _private_temp_dir()
    if private is None:
        raise RuntimeError(f"cannot write {cache}, and no private temporary folder")
    (private / "kernels").mkdir(exist_ok=True)
    return private / "kernels"


def _build(name: str, cc: list[str]) -> Path:
    source = KERNELS / f"{name}.c"
    version = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=60)
    key = hashlib.sha256(
        source.read_bytes()
        + version.stdout.encode()
        + _machine_identity().encode()
        + repr((FLAGS, OPTIONS)).encode()
    ).hexdigest()[:16]
    folder = _kernel_dir()
    target = folder / f"{name}-{key}.so"
    if target.exists():
        return target
    errors = []
    for options in OPTIONS:
        handle, partial_name = tempfile.mkstemp(dir=folder, suffix=".partial")
        os.close(handle)
        partial = Path(partial_name)
        try:
            command = [*cc, *FLAGS, *options, str(source), "-o", str(partial), "-lm"]
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
            if result.returncode == 0:
                os.replace(partial, target)  # whole or absent, also with builds side by side
                return target
        finally:
            partial.unlink(missing_ok=True)
        errors.append(result.stderr.strip().splitlines()[-1:] or ["failed"])
    raise RuntimeError(f"{' '.join(cc)} could not build {source.name}: {errors[-1][0]}")


def _open(name: str, cc: list[str]) -> ctypes.CDLL:
    path = _build(name, cc)
    try:
        return ctypes.CDLL(str(path))
    except OSError:  # a damaged cached build: build it once more
        path.unlink(missing_ok=True)
        return ctypes.CDLL(str(_build(name, cc)))


def load(name: str) -> ctypes.CDLL | None:
    """The compiled kernel `name` (upseg/losses/kernels/NAME.c), or None where it cannot be had."""
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
                library = _open(name, cc)
            except FileNotFoundError as error:
                _reasons[name] = f"the C compiler {cc[0]!r} was not found ({error.strerror})"
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
