"""brainkern.data: NIfTI I/O, preprocessing, data sets, splits, augmentation,
HA-GAN sub-volume sampling and the embedded cohorts.

Submodules load on first use, so ``import brainkern.data`` stays cheap (nilearn,
scikit-learn and torch are imported only by the functions that need them).

- :func:`load_volume`, :func:`save_volume`, :class:`Volume` (``brainkern.data.io``)
- :class:`VolumeDataset`, :class:`Preprocess` (``dataset``, ``preprocess``)
- :class:`SliceDataset` (``slices``): 2D slices of 3D data sets, sequences as channels
- :func:`read_table`, :func:`scan_folder`, :func:`scan_bids`, :func:`scan_neurovault` (``sources``)
- :func:`stratified_kfold` (``splits``)
- :func:`foreground_mask`, :func:`background_values` (``masks``): brain masks fitted on a fold
- :func:`sample_subvolumes`, :func:`assemble_slabs`, :func:`slab_starts` (``subvolume``)
- ``augment``: classic augmentation; ``cohorts``: simulated cohorts from templates
"""

from __future__ import annotations

from brainkern._lazy import lazy_exports

_EXPORTS = {
    "Preprocess": "preprocess",
    "Record": "sources",
    "SliceDataset": "slices",
    "Volume": "io",
    "VolumeDataset": "dataset",
    "assemble_slabs": "subvolume",
    "background_values": "masks",
    "foreground_mask": "masks",
    "load_volume": "io",
    "read_table": "sources",
    "sample_subvolumes": "subvolume",
    "save_volume": "io",
    "scan_bids": "sources",
    "scan_folder": "sources",
    "scan_neurovault": "sources",
    "slab_starts": "subvolume",
    "stratified_kfold": "splits",
    "write_table": "sources",
}
_SUBMODULES = (
    "augment",
    "cache",
    "cohorts",
    "dataset",
    "io",
    "masks",
    "preprocess",
    "slices",
    "sources",
    "splits",
    "subvolume",
)

__all__ = sorted([*_EXPORTS, *_SUBMODULES])


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, _SUBMODULES)
