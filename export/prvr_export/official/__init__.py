"""Import checkpoints trained with the authors' official code (``prvr import``; docs/models.md §9).

``loader`` reads the file without running code from it; ``names`` maps official parameter names to ours;
``configs`` fills our config from the file's config and tensor shapes; ``convert`` writes the run folder.
Needs torch; imported only by ``prvr import``.
"""

from .convert import MODELS, OfficialCheckpoint, import_official, load_mapped, read_official
from .loader import DEFAULT_MAX_BYTES, load_restricted
from .names import NameMap, name_map, to_official

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MODELS",
    "NameMap",
    "OfficialCheckpoint",
    "import_official",
    "load_mapped",
    "load_restricted",
    "name_map",
    "read_official",
    "to_official",
]
