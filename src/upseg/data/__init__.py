"""Readers (BraTS, Decathlon, image folders, phantom), the slice store and its Dataset."""

from upseg.data.brats import BratsReader
from upseg.data.case import Case
from upseg.data.dataset import LowResPairs
from upseg.data.decathlon import DecathlonReader
from upseg.data.errors import DataError
from upseg.data.folder import FolderReader
from upseg.data.phantom import PhantomReader
from upseg.data.store import SliceStore, patient_split, prepare

# every reader by the format name it records in a store's manifest
READERS = {
    reader.format: reader for reader in (BratsReader, DecathlonReader, FolderReader, PhantomReader)
}
FORMATS = tuple(READERS)
# the formats read from files (the phantom is generated): what predict and the demo take
FILE_FORMATS = tuple(name for name in FORMATS if name != PhantomReader.format)

__all__ = [
    "FILE_FORMATS",
    "FORMATS",
    "READERS",
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
