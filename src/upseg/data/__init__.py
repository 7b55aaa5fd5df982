"""Readers (BraTS, Decathlon, image folders, phantom), the slice store and its Dataset."""

from upseg.data.brats import BratsReader
from upseg.data.case import Case
from upseg.data.dataset import LowResPairs
from upseg.data.decathlon import DecathlonReader
from upseg.data.errors import DataError
from upseg.data.folder import FolderReader
from upseg.data.phantom import PhantomReader
from upseg.data.store import SliceStore, patient_split, prepare

FORMATS = ("brats", "decathlon", "folder", "phantom")

__all__ = [
    "FORMATS",
    "BratsReader",
    "Case",
    "DataError",
    "DecathlonReader",
    "FolderReader",
    "LowResPairs",
    "PhantomReader",
    "SliceStore",
    "patient_split",
    "prepare",
]
