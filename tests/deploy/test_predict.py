from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from tests.data.files import brats_case, decathlon_task, truncate, write_nifti
from tests.helpers import run_cli
from upseg.data import BratsReader, DecathlonReader, FolderReader, SliceStore, prepare
from upseg.data.errors import DataError
from upseg.data.resize import stretch_logits
from upseg.data.volume import pad_or_crop, stretch, undo_pad_or_crop
from upseg.deploy.predict import (
    LABELS_KEY,
    MARGIN_TOLERANCE,
    Frames,
    Predictor,
    decision_margins,
    find_inputs,
    labels_session,
    predict,
    read_ahead,
)
from upseg.engine import TrainConfig
from upseg.engine.runs import load_checkpoint
from upseg.engine.trainer import train
from upseg.errors import TrainingError
from upseg.metrics import labels_from_logits
from upseg.models import build

TINY = {"backbone_kwargs": {"base_width": 4}, "input_size": 16, "batch_size": 2, "epochs": 1}
BRATS_VALUES = np.array([0, 1, 2, 4])


def tiny_run(store: Path, out: Path, **kwargs) -> Path:
    """One epoch of a few steps: a run directory like `upseg train` makes."""
    config = TrainConfig(store=str(store), out=str(out), max_steps_per_epoch=2, **TINY, **kwargs)
    train(config, progress=False)
    return out


@pytest.fixture(scope="module")
def brats_run(tmp_path_factory) -> Path:
    """A tiny run trained on three small synthetic BraTS cases (240 x 240 x 6)."""
    root = tmp_path_factory.mktemp("brats")
    for i in range(3):
        brats_case(root / "raw", f"case{i}", seed=i)
    store = prepare(BratsReader(root / "raw"), root / "store", progress=False)
    return tiny_run(store, root / "run")


@pytest.fixture(scope="module")
def baseline_run(brats_run: Path) -> Path:
    """A tiny baseline (no head: logits at r, stretched to R) on brats_run's store."""
    return tiny_run(brats_run.parent / "store", brats_run.parent / "baseline", head="none")


@pytest.fixture(scope="module")
def guided_run(brats_run: Path) -> Path:
    """A tiny guided head (it reads the image at R) on brats_run's store."""
    return tiny_run(brats_run.parent / "store", brats_run.parent / "guided", head="guided")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(images folder, store, run): a tiny run trained on PNGs of different sizes."""
    root = tmp_path_factory.mktemp("folder")
    data = folder_dataset(root / "data")
    store = prepare(FolderReader(data, size=32), root / "store", progress=False)
    return data, store, tiny_run(store, root / "run", lr=0.05)  # two steps that leave some disc


@pytest.fixture(scope="module")
def real_case(shared_data: Path) -> Path:
    return sorted(d for d in (shared_data / "brats2018").iterdir() if d.is_dir())[0]


@pytest.fixture(scope="module")
def real_store(real_case: Path, tmp_path_factory) -> SliceStore:
    """The training pipeline's own view of the real case (its tumour slices)."""
    out = tmp_path_factory.mktemp("real") / "store"
    return SliceStore(prepare(BratsReader(real_case, slices="tumour"), out, progress=False))


@pytest.fixture(scope="module")
def real_frames(brats_run: Path, real_case: Path) -> tuple[Predictor, Frames]:
    """The run's predictor and the real case as predict prepares it (read once)."""
    predictor = Predictor.from_run(brats_run)
    jobs, problems = find_inputs([real_case], "brats", "unused")
    assert problems == [] and [j.kind for j in jobs] == ["case"]
    return predictor, predictor.read(jobs[0])


def expected_classes(predictor: Predictor, inputs: np.ndarray) -> np.ndarray:
    """What evaluation does with the store's inputs: logits stretched to R, then argmax."""
    with torch.no_grad():
        logits = predictor.model(torch.from_numpy(np.array(inputs, dtype=np.float32)))
    return labels_from_logits(stretch_logits(logits, predictor.size)).numpy()


def test_real_brats_case_mask_lies_over_the_input(
    brats_run: Path,
    real_case: Path,
    real_store: SliceStore,
    real_frames: tuple[Predictor, Frames],
    tmp_path: Path,
) -> None:
    result = predict(brats_run, [real_case], tmp_path / "out", progress=False)
    assert result["skipped"] == [] and len(result["written"]) == 1
    written = Path(result["written"][0])
    assert written.name == f"{real_case.name}.nii.gz"
    mask = nib.load(written)
    flair = nib.load(next(real_case.glob("*_flair.nii*")))
    assert mask.shape == flair.shape
    np.testing.assert_array_equal(mask.affine, flair.affine)
    for key in ("qform_code", "sform_code", "pixdim", "xyzt_units", "quatern_b", "srow_x"):
        np.testing.assert_array_equal(mask.header[key], flair.header[key], err_msg=key)
    labels = np.asarray(mask.dataobj)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 4}
    # Slice by slice, the mask is what the model makes of the store's own inputs at r,
    # cropped from 256 back to 240 and with class 3 written as label 4.
    predictor = real_frames[0]
    r, mode = predictor.config.input_size, predictor.config.downsample
    classes = expected_classes(predictor, real_store.lowres_images(r, mode))
    positions = real_store.slices[:, 1]
    np.testing.assert_array_equal(
        np.moveaxis(labels[..., positions], -1, 0), BRATS_VALUES[classes[:, 8:248, 8:248]]
    )


def test_lowres_input_is_the_training_input(
    brats_run: Path, real_store: SliceStore, real_frames: tuple[Predictor, Frames]
) -> None:
    predictor = Predictor.from_run(brats_run)  # its own config: the modes change below
    frames = real_frames[1]
    at = np.searchsorted(frames.positions, real_store.slices[:, 1])
    assert np.array_equal(frames.positions[at], real_store.slices[:, 1])  # brain has tumour
    np.testing.assert_array_equal(frames.images[at].astype(np.float16), real_store.images)
    for mode in ("area", "bilinear", "nearest"):
        predictor.config.downsample = mode
        np.testing.assert_array_equal(
            predictor.inputs(frames.images[at]).numpy(),
            real_store.lowres_images(16, mode),
            err_msg=mode,
        )


def test_a_guided_run_takes_the_frames_at_full_resolution(guided_run: Path) -> None:
    """Its model averages the frames down itself, so predict feeds them whole, as training
    did (the store's float16 frames)."""
    predictor = Predictor.from_run(guided_run)
    store = SliceStore(guided_run.parent / "store")
    frames = np.asarray(store.images[:3], dtype=np.float32)
    np.testing.assert_array_equal(predictor.inputs(frames).numpy(), frames)
    np.testing.assert_array_equal(
        predictor.classes(frames), expected_classes(predictor, store.images[:3])
    )


def test_restore_undoes_the_padding_and_maps_labels(brats_run: Path) -> None:
    predictor = Predictor.from_run(brats_run)
    frames = predictor.read(find_inputs([brats_run.parent / "raw" / "case0"], "brats", "x")[0][0])
    assert list(frames.positions) == [1, 2, 3, 4, 5]  # slice 0 holds no brain
    classes = np.zeros((5, 256, 256), dtype=np.uint8)
    classes[:, 8 + 5, 8 + 7] = 3  # frame pixel of source voxel (5, 7)
    classes[:, 3, 3] = 1  # in the padding: outside the volume
    labels = predictor.restore(classes, frames)
    assert labels.shape == (240, 240, 6)
    assert (labels[5, 7, 1:] == 4).all() and labels[5, 7, 0] == 0
    assert np.count_nonzero(labels) == 5


@pytest.mark.parametrize("extent", [200, 240, 256, 300])
def test_undo_pad_or_crop_inverts_pad_or_crop(extent: int) -> None:
    source = np.random.default_rng(0).integers(1, 9, (2, extent, extent + 3)).astype(np.uint8)
    framed, offsets = pad_or_crop(source, 256)
    back = undo_pad_or_crop(framed, offsets, source.shape[1:])
    kept = back != 0  # cropped parts come back as 0
    np.testing.assert_array_equal(back[kept], source[kept])
    assert kept.sum() == min(extent, 256) * min(extent + 3, 256) * 2


def test_bad_inputs_are_reported_and_skipped(brats_run: Path, tmp_path: Path) -> None:
    good = brats_case(tmp_path / "in", "good")
    truncated = brats_case(tmp_path / "in", "truncated")
    truncate(truncated / "truncated_flair.nii.gz")
    missing = brats_case(tmp_path / "in", "missing")
    (missing / "missing_t2.nii.gz").unlink()
    nans = brats_case(tmp_path / "in", "nans")
    volume = np.asarray(nib.load(nans / "nans_t1.nii.gz").dataobj).astype(np.float32)
    volume[0, 0, 0] = np.nan
    write_nifti(nans / "nans_t1.nii.gz", volume)
    single = good / "good_t1ce.nii.gz"  # one modality of four
    png = tmp_path / "in" / "photo.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(png)
    out = tmp_path / "out"
    result = run_cli(
        "predict", str(brats_run), *map(str, (truncated, good, missing, nans, single, png)),
        "--out", str(out), "--quiet",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 5, errors
    assert all(line.startswith("error: ") for line in errors)
    text = result.stderr
    assert f"{truncated / 'truncated_flair.nii.gz'}: cannot read the NIfTI data" in text
    assert f"{missing}: modality 't2' is missing" in text
    assert f"{nans / 'nans_t1.nii.gz'}: 1 voxels are NaN or infinite" in text
    assert f"{single}: holds 1 channel(s); the model needs 4" in text
    assert f"{png}: the model was trained on brats volumes" in text
    assert sorted(p.name for p in out.iterdir()) == ["good.nii.gz"]  # no partial files
    assert "1 written" in result.stdout and "5 skipped" in result.stdout
    assert nib.load(out / "good.nii.gz").shape == (240, 240, 6)


def test_existing_masks_are_kept_without_force(brats_run: Path, tmp_path: Path) -> None:
    case = brats_case(tmp_path / "in", "case")
    out = tmp_path / "out"
    argv = ["predict", str(brats_run), str(case), "--out", str(out), "--quiet"]
    assert run_cli(*argv).returncode == 0
    mask = out / "case.nii.gz"
    first = np.asarray(nib.load(mask).dataobj)
    mask.write_bytes(b"not a mask")
    again = run_cli(*argv)
    assert again.returncode == 1
    assert f"{mask}: exists; pass --force to replace it" in again.stderr
    assert mask.read_bytes() == b"not a mask"
    forced = run_cli(*argv, "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"wrote {mask}" in forced.stdout
    np.testing.assert_array_equal(np.asarray(nib.load(mask).dataobj), first)
    assert sorted(p.name for p in out.iterdir()) == ["case.nii.gz"]


def test_input_and_output_clashes_are_usage_errors(brats_run: Path, tmp_path: Path) -> None:
    a = brats_case(tmp_path / "a", "case")
    b = brats_case(tmp_path / "b", "case")
    result = run_cli("predict", str(brats_run), str(a), str(b), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "would both be written to" in result.stderr
    assert (
        run_cli("predict", str(brats_run), str(a), "--out", "o", "--batch-size", "0").returncode
        == 2
    )


def folder_dataset(root: Path, count: int = 6) -> Path:
    """images/ + masks/ PNGs of different sizes: a bright disc on noise, masks 0/255."""
    rng = np.random.default_rng(0)
    for i in range(count):
        h, w = 40 + 4 * i, 56 - 2 * i
        y, x = np.mgrid[:h, :w]
        disc = (y - h / 2) ** 2 + (x - w / 3) ** 2 < (h / 4) ** 2
        image = np.clip(60 + 120 * disc + rng.normal(0, 20, (h, w)), 0, 255).astype(np.uint8)
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images" / f"img{i}.png")
        Image.fromarray((disc * 255).astype(np.uint8)).save(root / "masks" / f"img{i}.png")
    return root


def test_png_round_trip_without_the_store(
    folder_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    data, store_path, run = folder_run
    store = SliceStore(store_path)
    predictor = Predictor.from_run(run)
    classes = expected_classes(predictor, store.lowres_images(16, "area"))
    # class 1 goes back as 255 (the largest pixel value of class 1), at the image's size
    frames = predictor.read(find_inputs([data / "images" / "img0.png"], "folder", "x")[0][0])
    assert frames.shape == (40, 56) and frames.images.shape == (1, 1, 32, 32)
    hand = np.zeros((1, 32, 32), dtype=np.uint8)
    hand[0, 16:, :] = 1
    restored = predictor.restore(hand, frames)
    assert restored.shape == (40, 56) and (restored[20:] == 255).all() and not restored[:20].any()
    files = store.manifest["patients"]
    shutil.rmtree(store.path)  # the checkpoint carries the preprocessing (later tests too)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(rgb)
    out = tmp_path / "out"
    result = predict(run, [data, rgb], out, progress=False)
    assert [s["path"] for s in result["skipped"]] == [str(rgb)]
    assert "has 3 channels, the model takes 1" in result["skipped"][0]["problem"]
    assert len(result["written"]) == 6
    for patient, predicted in zip(files, classes, strict=True):
        name = patient["geometry"]["files"][0]
        shape = tuple(patient["geometry"]["shapes"][0])
        png = np.asarray(Image.open(out / name))
        assert png.shape == shape and png.dtype == np.uint8
        assert set(np.unique(png)) <= {0, 255}
        back = stretch(predicted[None], shape, labels=True)[0]
        np.testing.assert_array_equal(png, back * 255)


def test_decathlon_4d_images_give_3d_masks(tmp_path: Path) -> None:
    task = decathlon_task(tmp_path / "task", cases=3)
    reader = DecathlonReader(task, size=32)
    store = prepare(reader, tmp_path / "store", progress=False)
    run = tiny_run(store, tmp_path / "run")
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["data"]["label_values"] == {"0": 0, "1": 1}  # PZ + TZ -> prostate -> 1
    assert state["data"]["options"]["modality_index"] == 0
    out = tmp_path / "out"
    result = predict(run, [task / "imagesTr"], out, progress=False)
    assert result["skipped"] == [] and len(result["written"]) == 3
    for written in result["written"]:
        mask = nib.load(written)
        image = nib.load(task / "imagesTr" / Path(written).name)
        assert image.shape == (24, 20, 5, 2) and mask.shape == (24, 20, 5)
        np.testing.assert_array_equal(mask.affine, image.affine)
        np.testing.assert_array_equal(mask.header.get_zooms(), image.header.get_zooms()[:3])
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    # the first case slice by slice against the store's inputs, stretched back to 24 x 20
    predictor = Predictor.from_run(run)
    stored = SliceStore(store)
    first = stored.indices(patients=["prostate_00"])
    classes = expected_classes(predictor, stored.lowres_images(16, "area")[first])
    mask = np.asarray(nib.load(out / "prostate_00.nii.gz").dataobj)
    np.testing.assert_array_equal(
        np.moveaxis(mask, -1, 0), stretch(classes.astype(np.uint8), (24, 20), labels=True)
    )


def test_checkpoints_without_recorded_data_use_the_store(brats_run: Path, tmp_path: Path) -> None:
    state = load_checkpoint(brats_run / "checkpoints" / "last.pt")
    assert state["data"]["label_values"] == {"0": 0, "1": 1, "2": 2, "3": 4}
    assert state["data"]["transform"] == "pad" and state["data"]["size"] == 256
    older = tmp_path / "run"
    shutil.copytree(brats_run, older)
    del state["data"]  # as checkpoints were written before they recorded it
    torch.save(state, older / "checkpoints" / "last.pt")
    predictor = Predictor.from_run(older)
    assert predictor.spec == Predictor.from_run(brats_run).spec


def test_slices_larger_than_the_frame_are_written_with_a_warning(
    brats_run: Path, tmp_path: Path
) -> None:
    case = brats_case(tmp_path / "in", "wide")
    for path in case.iterdir():  # 240 -> 300 wide, with brain in the band beyond 256
        volume = np.asarray(nib.load(path).dataobj)
        wide = np.zeros((300, *volume.shape[1:]), dtype=volume.dtype)
        wide[30:270] = volume
        if "_seg" not in path.name:
            wide[:5, 100:110, 1:] = 200
        write_nifti(path, wide)
    result = run_cli("predict", str(brats_run), str(case), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert f"warning: {case}: slices of 300 x 240 are larger than" in result.stderr
    mask = np.asarray(nib.load(tmp_path / "out" / "wide.nii.gz").dataobj)
    assert mask.shape == (300, 240, 6) and not mask[:22].any()


# -- runtimes: onnxruntime against eager PyTorch ------------------------------------------


def mask_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def assert_same_labels(got: np.ndarray, expected: np.ndarray, logits: torch.Tensor) -> None:
    """onnxruntime's labels are PyTorch's, except perhaps in a rare pixel where PyTorch's two
    best logits tie up to float rounding (decision margin <= MARGIN_TOLERANCE): the graphs
    compute the same sums in other orders (a folded head, ORT's kernels), so a tie may fall
    either way. None have been seen with these runs."""
    assert got.shape == expected.shape
    differ = got != expected
    if differ.any():
        margins = decision_margins(logits).numpy()[differ]
        assert margins.max() <= MARGIN_TOLERANCE, f"labels differ where margins reach {margins}"
        assert differ.mean() <= 1e-5, f"{int(differ.sum())} pixels differ, all at ties"


@pytest.mark.parametrize("kind", ["head", "baseline", "guided", "folder"])
def test_ort_masks_are_the_torch_masks(
    kind: str,
    brats_run: Path,
    baseline_run: Path,
    guided_run: Path,
    folder_run: tuple[Path, Path, Path],
    tmp_path: Path,
) -> None:
    if kind == "folder":
        run, inputs = folder_run[2], [folder_run[0]]
    else:
        run = {"head": brats_run, "baseline": baseline_run, "guided": guided_run}[kind]
        inputs = [brats_run.parent / "raw"]  # three case folders
    threads = torch.get_num_threads()
    eager = predict(run, inputs, tmp_path / "torch", runtime="torch", progress=False)
    onnx = predict(run, inputs, tmp_path / "ort", runtime="ort", progress=False)
    assert (eager["runtime"], onnx["runtime"]) == ("torch", "ort")
    assert eager["skipped"] == onnx["skipped"] == [] and len(onnx["written"]) >= 3
    assert mask_bytes(tmp_path / "ort") == mask_bytes(tmp_path / "torch")
    assert (run / "export" / "last-labels.onnx").is_file()
    assert torch.get_num_threads() == threads  # ort ran with PyTorch on one thread, restored


def test_ort_classes_on_a_real_case(
    baseline_run: Path, real_frames: tuple[Predictor, Frames]
) -> None:
    """Every slice of a real case: onnxruntime's labels are PyTorch's, and any pixel where they
    could differ has to be a float-rounding tie in PyTorch's own logits."""
    frames = real_frames[1]
    eager = Predictor.from_run(baseline_run, runtime="torch")
    onnx = Predictor.from_run(baseline_run, runtime="ort")
    assert (eager.runtime, onnx.runtime) == ("torch", "ort")
    expected, got = eager.classes(frames.images), onnx.classes(frames.images)
    with torch.no_grad():
        logits = stretch_logits(eager.model(eager.inputs(frames.images)), eager.size)
    assert_same_labels(got, expected, logits)


def test_ort_graph_is_cached_and_rebuilt_for_a_new_checkpoint(
    brats_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(brats_run, run, ignore=shutil.ignore_patterns("export"))
    cache = run / "export" / "last-labels.onnx"
    first = Predictor.from_run(run, runtime="ort")
    assert first.labeller.how == f"exported to {cache}" and cache.is_file()
    stamp = cache.stat().st_mtime_ns
    again = Predictor.from_run(run, runtime="auto")
    assert again.runtime == "ort" and again.labeller.how == f"cached {cache}"
    assert cache.stat().st_mtime_ns == stamp
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temporary files
    # retrained: same file name, other weights -> exported again, with the new weights
    checkpoint = run / "checkpoints" / "last.pt"
    state = load_checkpoint(checkpoint)
    weights = state["model"]
    state["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()}
    torch.save(state, checkpoint)
    retrained = Predictor.from_run(run, runtime="ort")
    assert retrained.labeller.how == f"exported to {cache}"
    keys = [p.labeller.session.get_modelmeta().custom_metadata_map for p in (first, retrained)]
    assert keys[0][LABELS_KEY] != keys[1][LABELS_KEY]
    frames = retrained.read(find_inputs([brats_run.parent / "raw" / "case0"], "brats", "x")[0][0])
    eager = Predictor.from_run(run, runtime="torch")
    np.testing.assert_array_equal(retrained.classes(frames.images), eager.classes(frames.images))
    # a damaged cache is replaced too
    cache.write_bytes(b"not onnx")
    assert Predictor.from_run(run, runtime="ort").labeller.how == f"exported to {cache}"
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]


def test_runtime_names_and_export_failures(
    brats_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    case = brats_run.parent / "raw" / "case0"
    with pytest.raises(ValueError, match="unknown runtime 'onnx'; choose one of auto, torch, ort"):
        predict(brats_run, [case], tmp_path / "out", runtime="onnx", progress=False)
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        Predictor.from_run(brats_run, runtime="tensorrt")
    assert predict(brats_run, [case], tmp_path / "auto")["runtime"] == "ort"  # the default
    assert "predict: runtime ort (onnxruntime " in capsys.readouterr().err
    run = tmp_path / "run"
    shutil.copytree(brats_run, run, ignore=shutil.ignore_patterns("export"))

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("exporter says no")

    monkeypatch.setattr("upseg.deploy.export.write_onnx", broken)
    assert predict(run, [case], tmp_path / "fallback", runtime="auto")["runtime"] == "torch"
    err = capsys.readouterr().err
    assert "predict: runtime torch (eager PyTorch, " in err
    assert "; auto: onnxruntime not used (RuntimeError: exporter says no)" in err
    with pytest.raises(TrainingError, match="ONNX export for runtime 'ort' failed"):
        Predictor.from_run(run, runtime="ort")
    assert not (run / "export").exists()  # nothing half-written
    np.testing.assert_array_equal(
        np.asarray(nib.load(tmp_path / "fallback" / "case0.nii.gz").dataobj),
        np.asarray(nib.load(tmp_path / "auto" / "case0.nii.gz").dataobj),
    )


@pytest.mark.parametrize("head", [None, "plain"])
def test_one_channel_labels_graph_thresholds_at_zero(head: str | None, tmp_path: Path) -> None:
    """A bce model (one logit): the graph's labels are logit > 0, as labels_from_logits."""
    torch.manual_seed(0)
    model = build("elunet", 2, 1, 16, 64, head=head, base_width=4).eval()
    x = torch.randn(4, 2, 16, 16)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 1]
    with torch.no_grad():  # fresh logits are ~0.04 +- 0.003: spread them around 0
        scale = 1 / model(x).std()
        last[-1].weight *= scale
        last[-1].bias *= scale
        last[-1].bias -= model(x).median()
        logits = stretch_logits(model(x), 64)
    session, path, how = labels_session(model, 64, tmp_path / "m.onnx", "key-1")
    assert path == tmp_path / "m.onnx" and how == f"exported to {path}"
    assert session.get_modelmeta().custom_metadata_map[LABELS_KEY] == "key-1"
    expected = labels_from_logits(logits).numpy()
    got = session.run(["labels"], {"image": x.numpy()})[0]
    assert got.dtype == np.uint8 and 0.3 < expected.mean() < 0.7
    assert_same_labels(got, expected, logits)


def test_an_unwritable_cache_folder_exports_without_caching(
    brats_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(brats_run, run, ignore=shutil.ignore_patterns("export"))
    (run / "export").write_text("a file where the cache folder would go")
    predictor = Predictor.from_run(run, runtime="ort")
    assert predictor.runtime == "ort" and "; not cached, " in predictor.labeller.how
    assert (run / "export").read_text() == "a file where the cache folder would go"


def test_read_ahead_keeps_order_reads_the_next_job_early_and_keeps_errors_apart() -> None:
    import threading

    started: list[int] = []
    second_started = threading.Event()

    def read(job: int) -> int:
        started.append(job)
        if job == 1:
            second_started.set()
        if job == 2:
            raise DataError(f"file{job}", "truncated")
        return 10 * job

    futures = read_ahead(read, [0, 1, 2, 3])
    first = next(futures)
    assert first.result() == 0
    assert second_started.wait(5)  # job 1 is read while job 0 is still being worked on
    results = []
    for future in futures:
        try:
            results.append(future.result())
        except DataError as error:
            results.append(str(error.path))
    assert results == [10, "file2", 30] and started == [0, 1, 2, 3]
    assert list(read_ahead(read, [])) == []
