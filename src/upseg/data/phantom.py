"""A procedural brain-tumour phantom: the built-in data that needs no download.

Each patient is a stack of axial slices through an elliptical head: scalp, cerebrospinal
fluid, grey and white matter, two ventricles, and a tumour with a necrotic core (NCR), an
enhancing rim (ET) and surrounding edema (ED), the BraTS classes. Tumour boundaries are
perturbed by angular harmonics up to order 24, so at R = 256 they carry detail that a
16 x 16 input only hints at through partial volume. Four contrasts (flair, t1, t1ce, t2)
differ per tissue; each gets a smooth multiplicative bias field and Rician noise, then the
same per-volume brain z-score as the BraTS reader. Deterministic from (seed, patient).
"""

from __future__ import annotations

import numpy as np

from upseg.data.brats import BRATS_CLASSES, MODALITIES
from upseg.data.case import Case
from upseg.data.volume import check_size, zscore

# tissue intensity per modality: background, scalp, CSF, grey, white, edema, enhancing, necrosis
TISSUES = ("background", "scalp", "csf", "grey", "white", "edema", "enhancing", "necrosis")
CONTRAST = np.array(
    [
        [0.0, 0.30, 0.10, 0.55, 0.45, 0.95, 0.80, 0.40],  # flair
        [0.0, 0.80, 0.20, 0.45, 0.65, 0.35, 0.40, 0.25],  # t1
        [0.0, 0.80, 0.20, 0.45, 0.65, 0.35, 1.00, 0.20],  # t1ce
        [0.0, 0.40, 1.00, 0.60, 0.45, 0.85, 0.60, 0.90],  # t2
    ],
    dtype=np.float32,
)
TISSUE_CLASS = np.array([0, 0, 0, 0, 0, 2, 3, 1], dtype=np.uint8)  # tissue -> BraTS class


ANGLE_BINS = 2048


class WobblyBoundary:
    """A radius modulation 1 + sum_k a_k cos(k angle + phase_k), amplitudes falling as 1/k,
    whose phases drift slowly through the stack. Evaluated on an angle lookup table."""

    def __init__(self, rng: np.random.Generator, order: int, amount: float) -> None:
        k = np.arange(2, order + 1, dtype=np.float32)
        self.k = k[:, None]
        self.amplitude = (amount * rng.normal(size=k.size) / k).astype(np.float32)[:, None]
        self.phase = rng.uniform(0, 2 * np.pi, k.size).astype(np.float32)[:, None]
        self.drift = rng.normal(0, 1.0, k.size).astype(np.float32)[:, None]
        self.bins = np.linspace(-np.pi, np.pi, ANGLE_BINS, dtype=np.float32)

    def __call__(self, angle_bin: np.ndarray, z: float) -> np.ndarray:
        terms = self.amplitude * np.cos(self.k * self.bins + self.phase + z * self.drift)
        return (1.0 + terms.sum(0))[angle_bin]


def _smooth_field(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, scale: float):
    """A low-order polynomial in (y, x) in [-1, 1]: a bias field around 1."""
    c = rng.normal(0, scale, 5)
    return 1.0 + c[0] * x + c[1] * y + c[2] * x * y + c[3] * x**2 + c[4] * y**2


class PhantomReader:
    """`num_patients` synthetic patients of `slices_per_patient` slices at size x size."""

    format = "phantom"

    def __init__(
        self, size: int = 256, num_patients: int = 12, slices_per_patient: int = 24, seed: int = 0
    ) -> None:
        for name, flag, value, least in (
            ("num_patients", "--patients", num_patients, 2),
            ("slices_per_patient", "--slices-per-patient", slices_per_patient, 1),
            ("seed", "--seed", seed, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise ValueError(f"{name} ({flag}) must be an integer >= {least}, got {value!r}")
        self.size = check_size(size)
        self.num_patients = num_patients
        self.slices_per_patient = slices_per_patient
        self.seed = seed
        self.modalities = MODALITIES
        self.class_names = BRATS_CLASSES
        self.root = None
        self.options = {
            "num_patients": num_patients,
            "slices_per_patient": slices_per_patient,
            "seed": seed,
        }

    def items(self) -> list[int]:
        return list(range(self.num_patients))

    def read(self, patient: int) -> Case:
        rng = np.random.default_rng([self.seed, patient])
        n, size = self.slices_per_patient, self.size
        grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
        y, x = np.meshgrid(grid, grid, indexing="ij")
        head_axes = rng.uniform([0.72, 0.6], [0.85, 0.72])
        centre = rng.uniform(-0.25, 0.25, 2) * (head_axes - 0.25)
        tumour_centre = centre + rng.uniform(-0.3, 0.3, 2)
        tumour_radius = rng.uniform(0.16, 0.3)
        texture_phase = rng.uniform(0, 2 * np.pi, 4)
        edema_edge = WobblyBoundary(rng, 24, 0.35)
        active_edge = WobblyBoundary(rng, 24, 0.25)
        core_edge = WobblyBoundary(rng, 16, 0.3)
        tissues = np.zeros((n, size, size), dtype=np.uint8)
        for i in range(n):
            z = (i + 0.5) / n * 2 - 1  # position through the stack, -1 .. 1
            shrink = np.sqrt(max(1 - 0.6 * z * z, 0.05))
            dy, dx = y - centre[0], x - centre[1]
            head = (dy / (head_axes[0] * shrink)) ** 2 + (dx / (head_axes[1] * shrink)) ** 2
            tissue = np.zeros((size, size), dtype=np.uint8)
            tissue[head < 1.0] = 1  # scalp
            tissue[head < 0.86] = 2  # CSF rim
            brain = head < 0.78
            folds = np.sin(9 * dx + texture_phase[0] + 3 * np.sin(7 * dy + texture_phase[1]))
            tissue[brain] = 3  # grey
            tissue[brain & (head < 0.55) & (folds < 0.4)] = 4  # white
            for side in (-1, 1):  # ventricles
                vy, vx = dy + 0.05, dx - side * 0.12 * shrink
                tissue[(vy / 0.2) ** 2 + (vx / 0.06) ** 2 < shrink**2] = 2
            # tumour: a sphere through the stack with wobbly boundaries
            tz = 1 - (z / 0.8) ** 2
            if tz > 0:
                ty, tx = y - tumour_centre[0], x - tumour_centre[1]
                radius = np.hypot(ty, tx)
                angle_bin = ((np.arctan2(ty, tx) + np.pi) / (2 * np.pi) * (ANGLE_BINS - 1)).astype(
                    np.int32
                )
                outer = tumour_radius * np.sqrt(tz)
                edema = outer * 1.6 * edema_edge(angle_bin, z)
                active = outer * active_edge(angle_bin, z)
                core = outer * 0.6 * core_edge(angle_bin, z)
                tissue[brain & (radius < edema)] = 5
                tissue[brain & (radius < active)] = 6
                tissue[brain & (radius < core)] = 7
            tissues[i] = tissue
        images = CONTRAST[:, tissues]  # (C, N, H, W)
        bias = np.stack([_smooth_field(rng, y, x, 0.12) for _ in MODALITIES])[:, None]
        noise_level = rng.uniform(0.03, 0.07)
        real = images * bias + noise_level * rng.standard_normal(images.shape, np.float32)
        imaginary = noise_level * rng.standard_normal(images.shape, np.float32)
        images = np.hypot(real, imaginary) * (tissues > 0)  # Rician magnitude, 0 outside
        brain_voxels = tissues > 0
        images = np.stack([zscore(channel, brain_voxels) for channel in images], axis=1)
        return Case(
            patient_id=f"phantom_{self.seed}_{patient:03d}",
            images=images.astype(np.float32),
            masks=TISSUE_CLASS[tissues],
            slice_indices=np.arange(n, dtype=np.int32),
            source=f"phantom(seed={self.seed})",
            geometry={"shape": [size, size, n], "transform": "none"},
        )
