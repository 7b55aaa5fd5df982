"""upseg predict: segment NIfTI volumes and images with a trained run; each mask lands in its
input's own voxel grid with the source's label values.

An input goes through the functions that built the run's slice store (the readers' own
z-scoring and pad / stretch to R), is rounded to float16 as the store keeps its frames, and
is downsampled to r with the run's mode (a guided model takes it at R and averages it
down itself), so the model sees what it saw in training. The
R x R class maps then go back the way they came: un-padded (or un-cropped) for BraTS,
stretched back with nearest neighbours for Decathlon slices and images, and class indices
turned back into label values (BraTS 0/1/2/4, the Decathlon labels, the folder's pixel
values). A NIfTI mask takes its input's affine and header; an image mask is a PNG.

Runtimes: "torch" runs the model in eager PyTorch; "ort" runs one onnxruntime graph from the
model's input at r to the class map at R (the model exported as `upseg export` does, then the
baseline's bilinear stretch and the argmax, or logit > 0, in the graph: upseg.deploy.labels),
cached as RUN/export/<checkpoint>-labels.onnx and rebuilt when the checkpoint's content
changes; "auto" (predict's default) takes ort on the CPU when onnxruntime is there and the
export succeeds, else torch.
Both give the same labels up to pixels where the two best classes are within float rounding
of each other (MARGIN_TOLERANCE; the export checks this before it is used).

A bad input is reported (file and problem), skipped, and the others are still written.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import nibabel as nib
import numpy as np
import torch
from tqdm import tqdm

from upseg.data import FILE_FORMATS as FORMATS
from upseg.data import brats, decathlon, folder
from upseg.data.errors import DataError
from upseg.data.resize import downsample_image, stretch_logits
from upseg.data.store import SliceStore
from upseg.data.volume import load_nifti, stretch, undo_pad_or_crop
from upseg.deploy.runtimes import available_cores, ort_session, torch_threads
from upseg.engine import TrainConfig, load_run, resolve_device
from upseg.errors import TrainingError
from upseg.io import atomic_path
from upseg.metrics import labels_from_logits
from upseg.models import LowResSegmenter

NIFTI_SUFFIXES = (".nii.gz", ".nii")
RUNTIMES = ("auto", "torch", "ort")
# predict's default: onnxruntime measured 2-10x faster end to end than eager PyTorch on the
# CPU, with the same masks; a Predictor built directly stays on PyTorch unless asked.
DEFAULT_RUNTIME = "auto"
# Bump when the labels graph changes: cached graphs made before are then exported again.
LABELS_GRAPH = "upseg-labels-2"  # 2: a folded head argmaxes channels-last
LABELS_KEY = "upseg.labels_key"  # the cache key in the ONNX file's metadata_props
# Where onnxruntime's labels may differ from PyTorch's: only where the two best classes (one
# channel: the logit and 0) are this close in PyTorch's logits; float rounding decides there.
MARGIN_TOLERANCE = 1e-4


def nifti_suffix(path: Path) -> str | None:
    """'.nii.gz' or '.nii' when `path` names a NIfTI file, else None."""
    return next((s for s in NIFTI_SUFFIXES if path.name.lower().endswith(s)), None)


@dataclass
class Job:
    """One input and the mask it becomes. kind: 'case' (a BraTS case folder), 'nifti' (one
    volume file) or 'image' (a PNG / TIFF)."""

    source: Path
    kind: str
    out: Path


@dataclass
class Frames:
    """One input prepared like a training case."""

    images: np.ndarray  # (N, C, R, R) float32 at full resolution R
    positions: np.ndarray  # (N,) slice positions on the volume's last axis; [0] for an image
    shape: tuple[int, ...]  # the mask's grid: (X, Y, Z) for a volume, (H, W) for an image
    offsets: list[int] | None = None  # pad_or_crop's [top, left]; None: slices were stretched
    reference: Path | None = None  # NIfTI whose affine and header the mask takes


def decision_margins(logits: torch.Tensor) -> torch.Tensor:
    """(B, Nc, H, W) logits -> (B, H, W): how far each pixel's label is from changing, the
    best minus the second-best logit (one channel: |logit|, its distance from 0)."""
    if logits.shape[1] == 1:
        return logits[:, 0].abs()
    top = logits.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


class Labeller(Protocol):
    """A runtime: (N, C, r, r) float32 model inputs on the CPU -> (N, R, R) uint8 classes."""

    name: str
    torch_threads: int  # PyTorch's thread count while this runtime labels
    note: str  # how it runs, for the progress output

    def __call__(self, inputs: torch.Tensor) -> np.ndarray: ...


class TorchLabeller:
    """Eager PyTorch on the predictor's device: logits (a baseline's stretched bilinearly to
    R, as evaluation scores them), then labels_from_logits."""

    name = "torch"

    def __init__(self, model: LowResSegmenter, size: int, device: torch.device) -> None:
        self.model, self.size, self.device = model, size, device
        self.torch_threads = min(torch.get_num_threads(), available_cores())
        where = f"{self.torch_threads} threads" if device.type == "cpu" else str(device)
        self.note = f"torch (eager PyTorch, {where})"

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor) -> np.ndarray:
        logits = stretch_logits(self.model(inputs.to(self.device)).float(), self.size)
        return labels_from_logits(logits).to(torch.uint8).cpu().numpy()


class OrtLabeller:
    """onnxruntime on the CPU: one session from the model's input to uint8 labels, with all
    available cores; PyTorch keeps one thread for the preprocessing meanwhile."""

    name = "ort"
    torch_threads = 1

    def __init__(self, session: Any, path: Path | None, how: str) -> None:
        import onnxruntime as ort

        self.session, self.path, self.how = session, path, how
        self.input = session.get_inputs()[0].name
        threads = available_cores()
        self.note = f"ort (onnxruntime {ort.__version__}, {threads} threads, {how})"

    def __call__(self, inputs: torch.Tensor) -> np.ndarray:
        feed = {self.input: np.ascontiguousarray(inputs.numpy(), dtype=np.float32)}
        return self.session.run(["labels"], feed)[0]


def checkpoint_digest(path: Path) -> str:
    """SHA-256 of a checkpoint file's bytes: what a cached ONNX graph is keyed by."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def labels_session(
    model: LowResSegmenter, size: int, cache: Path | None, key: str
) -> tuple[Any, Path | None, str]:
    """An onnxruntime session of the model's labels graph (image at r -> uint8 labels at R)
    and the file it came from, reused from `cache` when that file carries `key`, else
    exported (in a temporary folder), checked against PyTorch and copied there atomically; a
    cache that cannot be written is skipped. Returns (session, the cached file or None, how
    it was obtained)."""
    if cache is not None and cache.is_file():
        try:
            session = ort_session(cache)
            if session.get_modelmeta().custom_metadata_map.get(LABELS_KEY) == key:
                return session, cache, f"cached {cache}"
        except Exception:  # a damaged or foreign file: export again over it
            pass
    from upseg.deploy.labels import export_labels

    with tempfile.TemporaryDirectory(prefix="upseg-predict-") as work:
        labels = Path(work) / "labels.onnx"
        export_labels(model, labels, size, uint8=True, binary=True, metadata={LABELS_KEY: key})
        session = ort_session(labels)
        check_labels(session, model, size)
        if cache is None:
            return session, None, "exported"
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cache) as tmp:
                shutil.copyfile(labels, tmp)
        except OSError as error:
            return session, None, f"exported; not cached, {cache}: {error.strerror or error}"
    return session, cache, f"exported to {cache}"


def check_labels(session: Any, model: LowResSegmenter, size: int) -> None:
    """An ExportError unless the labels graph gives PyTorch's labels on random inputs, up to
    pixels whose PyTorch decision margin is within MARGIN_TOLERANCE."""
    from upseg.deploy.export import ExportError

    side, channels = model.feed_size, int(model.in_channels)
    x = torch.randn(3, channels, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = stretch_logits(model.eval()(x).float(), size)
    expected = labels_from_logits(logits).numpy()
    got = session.run(["labels"], {session.get_inputs()[0].name: x.numpy()})[0]
    if got.shape != expected.shape:
        raise ExportError(f"ONNX labels {got.shape} != PyTorch {expected.shape}")
    differ = got != expected
    if differ.any():
        margin = float(decision_margins(logits).numpy()[differ].max())
        if margin > MARGIN_TOLERANCE:
            raise ExportError(
                f"ONNX labels differ from PyTorch's in {int(differ.sum())} pixels, where "
                f"PyTorch's margin reaches {margin:.3g} > {MARGIN_TOLERANCE:g}"
            )


class Predictor:
    """A trained model with its data preprocessing (`spec`, see SliceStore.preprocessing),
    and the runtime that labels its inputs (`labeller`; eager PyTorch by default)."""

    def __init__(
        self,
        model: LowResSegmenter,
        config: TrainConfig,
        spec: dict,
        device: torch.device | str = "cpu",
        labeller: Labeller | None = None,
    ) -> None:
        if spec["format"] not in FORMATS:
            raise ValueError(
                f"the run was trained on {spec['format']!r} data, which has no files to "
                f"predict on; predict takes runs trained on {', '.join(FORMATS)} data"
            )
        if not spec.get("label_values"):
            raise ValueError("the run's store records no label values to write masks with")
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.config = config
        self.spec = spec
        self.size = int(spec["size"])
        self.modalities = list(spec["modalities"])
        values = spec["label_values"]
        lut = [int(values[str(c)]) for c in range(len(spec["class_names"]))]
        dtype = np.uint8 if max(lut) <= 255 and min(lut) >= 0 else np.int16
        self.label_values = np.asarray(lut, dtype=dtype)  # class index -> written value
        self.labeller = labeller or TorchLabeller(self.model, self.size, self.device)

    @property
    def runtime(self) -> str:
        """The runtime that labels: 'torch' or 'ort'."""
        return self.labeller.name

    @classmethod
    def from_run(
        cls,
        run: str | Path,
        checkpoint: str = "last",
        device: str = "auto",
        runtime: str = "torch",
    ) -> Predictor:
        """The run's model and preprocessing: from the checkpoint, or, for checkpoints that
        do not record it, from the run's slice store. `runtime`: torch, ort (CPU; its graph
        cached in RUN/export) or auto (ort where it can, on the CPU, else torch)."""
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
        if runtime == "ort" and device == "auto":
            device = "cpu"  # onnxruntime runs here on the CPU
        try:
            target = resolve_device(device)
        except RuntimeError:
            raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
        if target.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA device is available here")
        if runtime == "ort" and target.type != "cpu":
            raise ValueError(f"runtime 'ort' runs on the CPU; use device cpu, not {device!r}")
        run = Path(run)
        key = None
        if runtime != "torch" and target.type == "cpu":
            # hashed before the weights are read: were the checkpoint replaced in between,
            # the cache would carry the older key and be exported again next time
            source = run / "checkpoints" / f"{checkpoint}.pt"
            if source.is_file():
                key = f"{LABELS_GRAPH};sha256={checkpoint_digest(source)}"
        model, config, state = load_run(run, checkpoint)
        spec = state.get("data") or SliceStore(config.store).preprocessing()
        predictor = cls(model, config, spec, target)
        if runtime == "torch":
            return predictor
        if target.type != "cpu":  # auto on a GPU: PyTorch runs there
            predictor.labeller.note += "; auto: PyTorch on the GPU"
            return predictor
        cache = run / "export" / f"{checkpoint}-labels.onnx"
        try:
            predictor.use_ort(cache, f"{key};size={predictor.size}")
        except Exception as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            reason = f"{type(error).__name__}: {reason}" if reason else type(error).__name__
            if runtime == "auto":
                predictor.labeller.note += f"; auto: onnxruntime not used ({reason})"
                return predictor
            if isinstance(error, ImportError):
                raise ValueError(
                    "runtime 'ort' needs onnxruntime and onnx; install them or use runtime torch"
                ) from error
            if isinstance(error, TrainingError):
                raise
            raise TrainingError(
                f"{run}: the ONNX export for runtime 'ort' failed ({reason}); use runtime torch"
            ) from error
        return predictor

    def use_ort(self, cache: Path | None = None, key: str = "") -> None:
        """Label with onnxruntime: the graph cached at `cache` when it carries `key`, else
        exported (and cached there when `cache` is given)."""
        if self.device.type != "cpu":
            raise ValueError(f"runtime 'ort' runs on the CPU, the model is on {self.device}")
        import onnx  # noqa: F401  (both needed: an ImportError here, before any work)
        import onnxruntime  # noqa: F401

        session, path, how = labels_session(self.model, self.size, cache, key)
        self.labeller = OrtLabeller(session, path, how)

    # -- the model's side: R x R frames -> inputs at r -> classes at R -------------------
    def inputs(self, images: np.ndarray) -> torch.Tensor:
        """(N, C, R, R) frames -> (N, C, r, r) float32 model inputs (R x R for a guided head,
        which averages them down itself), on the CPU, computed as SliceStore.lowres_images
        computes them from the store's float16 frames."""
        block = torch.from_numpy(np.asarray(images, dtype=np.float16).astype(np.float32))
        return downsample_image(block, self.model.feed_size, self.config.downsample)

    def classes(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(N, C, R, R) frames -> (N, R, R) uint8 class indices (a baseline's logits are
        stretched bilinearly to R first, as evaluation scores them), `batch_size` frames
        per runtime call."""
        out = np.zeros((len(images), self.size, self.size), dtype=np.uint8)
        with torch_threads(self.labeller.torch_threads):
            for start in range(0, len(images), batch_size):
                x = self.inputs(images[start : start + batch_size])
                out[start : start + len(x)] = self.labeller(x)
        return out

    # -- the file's side: input -> frames, classes -> mask in the input's grid ------------
    def read(self, job: Job) -> Frames:
        """Load and preprocess one input exactly as the run's store was prepared."""
        fmt = self.spec["format"]
        if fmt == "folder":
            return self._read_image(job.source)
        if job.kind == "case":
            volumes, reference = self._read_case(job.source)
        else:
            volumes, reference = self._read_volume(job.source), job.source
        if fmt == "brats":
            brain = brats.brain_mask(volumes)
            if self.spec["options"].get("slices") == "all":
                positions = np.arange(brain.shape[-1])
            else:  # slices without brain are background; training saw none of them
                positions = np.flatnonzero(brain.any(axis=(0, 1)))
            frames, offsets = brats.framed_slices(volumes, brain, positions, self.size)
            shape = volumes[0].shape
            cut = brats.outside_frame(brain, self.size)
            if cut:  # the model sees only its frame: say so instead of a silent background
                print(
                    f"warning: {job.source}: slices of {shape[0]} x {shape[1]} are larger than "
                    f"the model's {self.size} x {self.size} frame; {cut} brain voxels outside "
                    "it are written as background",
                    file=sys.stderr,
                )
            return Frames(frames, positions, shape, offsets=offsets, reference=reference)
        positions = np.arange(volumes[0].shape[-1])
        frames = decathlon.image_slices(volumes[0], positions, self.size)
        return Frames(frames, positions, volumes[0].shape, reference=reference)

    def _read_case(self, case: Path) -> tuple[list[np.ndarray], Path]:
        paths = []
        for name in self.modalities:
            path = brats.modality_file(case, name)
            if path is None:
                raise DataError(
                    case,
                    f"modality {name!r} is missing (no *_{name}.nii[.gz]); the model needs "
                    f"{', '.join(self.modalities)}",
                )
            paths.append(path)
        volumes = []
        for path in paths:
            volume = load_nifti(path)[0]
            if volume.ndim != 3:
                raise DataError(path, f"expected a 3-D volume, got shape {volume.shape}")
            if volumes and volume.shape != volumes[0].shape:
                raise DataError(
                    path, f"shape {volume.shape} differs from {paths[0].name}'s {volumes[0].shape}"
                )
            volumes.append(volume)
        return volumes, paths[0]

    def _read_volume(self, path: Path) -> list[np.ndarray]:
        """One NIfTI file -> the model's channels as 3-D volumes."""
        data = load_nifti(path)[0]
        if self.spec["format"] == "decathlon":
            index = self.spec["options"].get("modality_index")
            name = self.modalities[0]
            if data.ndim == 4 and index is None:
                raise DataError(
                    path,
                    f"is 4-D, and the run's store does not record which channel is {name}; "
                    "give a 3-D file of that modality",
                )
            return [decathlon.select_modality(data, 0 if data.ndim == 3 else index, name, path)]
        if data.ndim not in (3, 4):
            raise DataError(path, f"expected a 3-D or 4-D volume, got shape {data.shape}")
        count, found = len(self.modalities), 1 if data.ndim == 3 else data.shape[3]
        if found != count:
            raise DataError(
                path,
                f"holds {found} channel(s); the model needs {count} "
                f"({', '.join(self.modalities)}): give the BraTS case folder, or one 4-D file "
                "with them in this order on the last axis",
            )
        return [data] if data.ndim == 3 else [data[..., k] for k in range(count)]

    def _read_image(self, path: Path) -> Frames:
        image = folder.load_image(path)
        if image.shape[0] != len(self.modalities):
            raise DataError(
                path,
                f"has {image.shape[0]} channels, the model takes {len(self.modalities)}",
            )
        frame = folder.frame_image(image, self.size)
        return Frames(frame[None], np.zeros(1, dtype=np.int64), image.shape[1:])

    def restore(self, classes: np.ndarray, frames: Frames) -> np.ndarray:
        """(N, R, R) class indices -> label values in the input's grid (`frames.shape`)."""
        plane = tuple(frames.shape[:2])
        if frames.offsets is not None:
            grid = undo_pad_or_crop(classes, frames.offsets, plane)
        else:
            grid = stretch(classes, plane, labels=True)
        values = self.label_values[grid]
        if len(frames.shape) == 2:
            return values[0]
        out = np.zeros(frames.shape, dtype=values.dtype)
        out[..., frames.positions] = np.moveaxis(values, 0, -1)
        return out


# -- inputs ---------------------------------------------------------------------------------
def _is_case(path: Path) -> bool:
    return any(brats.modality_file(path, m) is not None for m in brats.MODALITIES)


def _expand(path: Path, fmt: str, out_dir: Path) -> list[Job]:
    """The jobs one command-line input stands for; DataError when it holds none."""
    if not path.exists():
        raise DataError(path, "not found")
    if fmt == "folder":
        if path.is_dir():
            images = path / "images" if (path / "images").is_dir() else path
            files = [
                f
                for f in sorted(images.iterdir())
                if f.suffix.lower() in folder.EXTENSIONS and not f.stem.endswith("_mask")
            ]
            if not files:
                raise DataError(path, f"no images here ({', '.join(folder.EXTENSIONS)})")
            return [Job(f, "image", out_dir / f"{f.stem}.png") for f in files]
        if path.suffix.lower() not in folder.EXTENSIONS:
            raise DataError(
                path,
                f"the model was trained on image files; give {', '.join(folder.EXTENSIONS)} "
                "files or folders of them",
            )
        return [Job(path, "image", out_dir / f"{path.stem}.png")]
    if path.is_dir():
        if fmt == "brats":
            cases = [path] if _is_case(path) else [d for d in sorted(path.iterdir()) if _is_case(d)]
            if not cases:
                raise DataError(
                    path,
                    "no BraTS case here (a folder of <case>_{flair,t1,t1ce,t2}.nii[.gz], or "
                    "a folder of such folders)",
                )
            jobs = []
            for case in cases:
                files = [brats.modality_file(case, m) for m in brats.MODALITIES]
                suffix = nifti_suffix(next(f for f in files if f is not None)) or ".nii.gz"
                jobs.append(Job(case, "case", out_dir / f"{case.name}{suffix}"))
            return jobs
        files = [f for f in sorted(path.iterdir()) if f.is_file() and nifti_suffix(f)]
        if not files:
            raise DataError(path, "no NIfTI files (.nii, .nii.gz) here")
        return [_volume_job(f, out_dir) for f in files]
    if nifti_suffix(path) is None:
        raise DataError(
            path,
            f"the model was trained on {fmt} volumes; give NIfTI files (.nii, .nii.gz)"
            + (" or BraTS case folders" if fmt == "brats" else ""),
        )
    return [_volume_job(path, out_dir)]


def _volume_job(path: Path, out_dir: Path) -> Job:
    suffix = nifti_suffix(path) or ".nii.gz"
    return Job(path, "nifti", out_dir / f"{path.name[: -len(suffix)]}{suffix}")


def find_inputs(
    inputs: Sequence[str | Path], fmt: str, out_dir: str | Path
) -> tuple[list[Job], list[DataError]]:
    """Jobs for the command-line inputs, and the inputs that hold none. Two inputs that would
    write the same mask, or a mask that would replace its own input, are bad usage
    (ValueError)."""
    out_dir = Path(out_dir)
    jobs, problems, seen = [], [], {}
    for item in inputs:
        try:
            expanded = _expand(Path(item), fmt, out_dir)
        except DataError as error:
            problems.append(error)
            continue
        for job in expanded:
            source = job.source.resolve()
            if source in seen.values():
                continue  # the same input named twice
            target = job.out.resolve()
            if target == source:
                raise ValueError(f"{job.out} would replace its own input; choose another --out")
            if target in seen:
                raise ValueError(
                    f"{seen[target]} and {job.source} would both be written to {job.out}; "
                    "predict them into different --out folders"
                )
            seen[target] = source
            jobs.append(job)
    return jobs, problems


# -- outputs --------------------------------------------------------------------------------
def write_nifti_mask(labels: np.ndarray, reference: Path, path: Path) -> None:
    """Write `labels` (the reference's 3-D grid) with the reference's affine and header
    (qform, sform and their codes, units, description), as an integer label image."""
    ref = nib.load(reference)
    if labels.shape != ref.shape[:3]:
        raise ValueError(f"mask {labels.shape} does not match {reference} {ref.shape}")
    image = type(ref)(labels, ref.affine, ref.header.copy())
    image.set_data_dtype(labels.dtype)
    header = image.header
    header.set_slope_inter(1, 0)
    header.set_intent("label")
    header["cal_min"], header["cal_max"] = 0, float(labels.max(initial=0))
    image.set_qform(ref.get_qform(), int(ref.header["qform_code"]))
    image.set_sform(ref.get_sform(), int(ref.header["sform_code"]))
    _atomic(path, lambda tmp: nib.save(image, tmp))


def write_png_mask(labels: np.ndarray, path: Path) -> None:
    """(H, W) labels -> 8-bit grey PNG (16-bit when a value exceeds 255)."""
    from PIL import Image

    if labels.max(initial=0) > 255:
        image = Image.fromarray(labels.astype(np.uint16))
    else:
        image = Image.fromarray(labels.astype(np.uint8), mode="L")
    _atomic(path, lambda tmp: image.save(tmp, format="PNG"))


def _atomic(path: Path, save: Callable[[Path], None]) -> None:
    """`save` writes a temporary name with the mask's suffix (which picks the format)."""
    with atomic_path(path, suffix=nifti_suffix(path) or path.suffix) as tmp:
        save(tmp)


# -- the command ----------------------------------------------------------------------------
def predict(
    run: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    checkpoint: str = "last",
    batch_size: int = 32,
    device: str = "auto",
    force: bool = False,
    progress: bool = True,
    on_skip: Callable[[str, str], None] | None = None,
    runtime: str = DEFAULT_RUNTIME,
) -> dict:
    """Segment every input with the run's model and write one mask per input into `out`.
    `runtime`: torch, ort or auto (see the module's docstring); the progress output says
    which one runs.

    Returns {"written": [paths], "skipped": [{"path", "problem"}], "runtime": "torch" or
    "ort"}. A bad input (unreadable, missing modalities, NaNs, wrong channel count) and an
    existing mask without `force` are skipped and passed to `on_skip(path, problem)` at
    once; the rest are still written.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    predictor = Predictor.from_run(run, checkpoint, device, runtime)
    return segment(predictor, inputs, out, batch_size, force, progress, on_skip)


def segment(
    predictor: Predictor,
    inputs: Sequence[str | Path],
    out: str | Path,
    batch_size: int = 32,
    force: bool = False,
    progress: bool = True,
    on_skip: Callable[[str, str], None] | None = None,
    force_hint: str = "pass --force to replace it",
) -> dict:
    """`predict`'s work once the predictor exists (the MONAI bundle runs it too): inputs
    found, read, labelled, restored and written; returns as `predict` does.
    `force_hint`: what the skip message of an existing mask tells the user to do."""
    out = Path(out)
    jobs, problems = find_inputs(inputs, predictor.spec["format"], out)
    skipped: list[dict] = []

    def skip(path: str | Path, problem: str) -> None:
        skipped.append({"path": str(path), "problem": problem})
        if on_skip is not None:
            on_skip(str(path), problem)

    for error in problems:
        skip(error.path, error.problem)
    if not jobs:
        return {"written": [], "skipped": skipped, "runtime": predictor.runtime}
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(out, f"cannot create the output folder ({error.strerror})") from None
    written: list[str] = []
    if progress:
        tqdm.write(f"predict: runtime {predictor.labeller.note}", file=sys.stderr)
    todo = []
    for job in jobs:
        if job.out.exists() and not force:
            skip(job.out, f"exists; {force_hint}")
        else:
            todo.append(job)
    bar = tqdm(todo, desc=f"predict [{predictor.runtime}]", unit="input", disable=not progress)
    for job, frames in zip(bar, read_ahead(predictor.read, todo), strict=True):
        bar.set_postfix_str(job.source.name)
        try:
            frames = frames.result()
            classes = predictor.classes(frames.images, batch_size)
            labels = predictor.restore(classes, frames)
            if frames.reference is not None:
                write_nifti_mask(labels, frames.reference, job.out)
            else:
                write_png_mask(labels, job.out)
        except DataError as error:
            skip(error.path, error.problem)
            continue
        except OSError as error:  # e.g. a full disk: name the mask that was not written
            skip(job.out, f"cannot write the mask ({error.strerror or error})")
            continue
        written.append(str(job.out))
    bar.close()
    return {"written": written, "skipped": skipped, "runtime": predictor.runtime}


def read_ahead(read: Callable[[Job], Frames], jobs: Sequence[Job]) -> Iterator[Future[Frames]]:
    """`read(job)` for each job in order, as futures: one background thread reads the next
    job while the caller labels and writes this one (decompression and NumPy release the
    GIL, so reading overlaps the runtime's work); it reads at most one job ahead."""
    if not jobs:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="upseg-read") as reader:
        ahead = reader.submit(read, jobs[0])
        for k in range(len(jobs)):
            current = ahead
            if k + 1 < len(jobs):
                ahead = reader.submit(read, jobs[k + 1])
            yield current


__all__ = [
    "RUNTIMES",
    "Frames",
    "Job",
    "OrtLabeller",
    "Predictor",
    "TorchLabeller",
    "decision_margins",
    "find_inputs",
    "predict",
    "segment",
    "write_nifti_mask",
    "write_png_mask",
]
