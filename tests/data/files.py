"""Small files in the real formats, written by the tests themselves."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

BRATS_SHAPE = (240, 240, 6)


def write_nifti(path: Path, data: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def brats_case(root: Path, name: str, extension: str = ".nii.gz", seed: int = 0) -> Path:
    """A BraTS-layout case: 4 int16 modalities inside a disc 'brain', a tumour with 1, 2, 4."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: BRATS_SHAPE[0], : BRATS_SHAPE[1]]
    brain2d = (y - 120) ** 2 + (x - 120) ** 2 < 90**2
    brain = np.repeat(brain2d[..., None], BRATS_SHAPE[2], axis=2)
    brain[..., 0] = False  # first slice holds no brain
    seg = np.zeros(BRATS_SHAPE, dtype=np.int16)
    tumour = ((y - 100) ** 2 + (x - 130) ** 2)[..., None]
    seg[..., 2:5] = np.where(tumour < 30**2, 2, 0)[..., :1]
    seg[..., 2:5] = np.where(tumour < 15**2, 4, seg[..., 2:5])[..., :1]
    seg[..., 2:5] = np.where(tumour < 6**2, 1, seg[..., 2:5])[..., :1]
    case = root / name
    for k, modality in enumerate(("flair", "t1", "t1ce", "t2")):
        volume = (rng.normal(300 + 100 * k, 40, BRATS_SHAPE) * brain).astype(np.int16)
        write_nifti(case / f"{name}_{modality}{extension}", volume)
    write_nifti(case / f"{name}_seg{extension}", seg)
    return case


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def decathlon_task(root: Path, cases: int = 3, shape=(24, 20, 5), name="Prostate") -> Path:
    """A Decathlon task: 4-D images (T2, ADC on the last axis), labels 0/1/2, dataset.json."""
    rng = np.random.default_rng(0)
    training = []
    for i in range(cases):
        y = np.linspace(0, 1, shape[0])[:, None, None] * np.ones(shape)
        t2 = 100 + 50 * y + rng.normal(0, 1, shape)  # a ramp along the first axis
        adc = 1000 + rng.normal(0, 5, shape)  # flat: tells the two modalities apart
        image = np.stack([t2, adc], axis=-1).astype(np.float32)
        label = np.zeros(shape, dtype=np.uint8)
        label[8:16, 6:14, 1:4] = 2
        label[10:14, 8:12, 1:4] = 1
        stem = f"{name.lower()}_{i:02d}"
        write_nifti(root / "imagesTr" / f"{stem}.nii.gz", image, spacing=(0.6, 0.6, 3.6))
        write_nifti(root / "labelsTr" / f"{stem}.nii.gz", label, spacing=(0.6, 0.6, 3.6))
        training.append(
            {"image": f"./imagesTr/{stem}.nii.gz", "label": f"./labelsTr/{stem}.nii.gz"}
        )
    meta = {
        "name": name,
        "modality": {"0": "T2", "1": "ADC"},
        "labels": {"0": "background", "1": "PZ", "2": "TZ"},
        "numTraining": cases,
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def lgg_subfolder_tree(
    root: Path, slices: dict[str, int], size: int = 32
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The kaggle_3m layout of the Kaggle LGG set: root/<patient>/<patient>_<k>.tif (uint8,
    3 channels last) beside <patient>_<k>_mask.tif (0/255), k = 1..n, for each patient: n.
    Returns, by file path below root, the (image, mask) arrays written."""
    import tifffile

    written: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for p, (patient, count) in enumerate(slices.items()):
        for k in range(1, count + 1):
            rng = np.random.default_rng([p, k])
            image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            image[..., 1] //= 2  # channels with different statistics
            mask = np.zeros((size, size), np.uint8)
            mask[k : k + 4, p : p + 6] = 255  # a different box on every slice
            folder = root / patient
            folder.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(folder / f"{patient}_{k}.tif", image)
            tifffile.imwrite(folder / f"{patient}_{k}_mask.tif", mask)
            written[f"{patient}/{patient}_{k}.tif"] = (image, mask)
    return written
