"""What a dataset is, without torch: its registry entry (DatasetSpec), a load request, the info of a loaded one, the error."""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, Sequence, get_args

from diffusers_cli.support.errors import UsageError

if TYPE_CHECKING:
    from torch.utils.data import Dataset

#: Which part of a dataset: its train or test split, or both.
Split = Literal["train", "test", "all"]
SPLITS: tuple[str, ...] = get_args(Split)

#: How a dataset's files are obtained, as `diffuse datasets` shows it.
Download = Literal["not needed", "--download", "by hand only", "not applicable"]
DOWNLOADS: tuple[str, ...] = get_args(Download)


class DataError(UsageError):
    """Bad data input: a missing, corrupt or unknown dataset. The message is one line saying how to fix it."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a loaded dataset holds."""

    name: str                       # canonical dataset name ("folder" for a directory of images)
    channels: int                   # 1 (greyscale) or 3 (RGB), after any forced conversion
    num_classes: int                # number of labels
    class_names: tuple[str, ...]    # label index -> name
    size: int                       # number of examples


@dataclass(frozen=True)
class LoadRequest:
    """What a loader is asked for, already checked by ``load_dataset``."""

    name: str                       # canonical dataset name
    root: Path                      # --data-dir (or its default); the folder itself for a folder dataset
    split: str                      # "train", "test" or "all"
    image_hw: tuple[int, int]       # (height, width) of every item
    channels: int                   # 1 or 3: the items' channels, converted if the files have others
    seed: int                       # drives generated data and the choice of a num_examples subset
    num_examples: int | None        # a seeded subset of this many examples; None: all (or a loader's default)
    download: bool                  # whether fetching missing files is allowed
    crop_boxes: bool                # crop to annotated boxes first, where the dataset has them


#: A loader returns the dataset, items (float32 [C, H, W] in [-1, 1], int label), and its class names.
Loaded = tuple["Dataset", tuple[str, ...]]
Loader = Callable[[LoadRequest], Loaded]
#: Reads class names from a data dir (or the folder itself for a folder dataset) without loading images.
ClassNameReader = Callable[[Path], tuple[str, ...]]
#: Reads the natural channels (1 or 3) from the files, for datasets whose channels are not fixed (prepared files).
ChannelReader = Callable[[Path], int]


@dataclass(frozen=True)
class DatasetSpec:
    """Everything about one dataset: its registry entry. Only ``loader`` and ``read_class_names`` import heavy code."""

    name: str                                       # canonical name, lower case: what --dataset takes
    description: str                                # one line for `diffuse datasets`
    channels: int                                   # natural channels: 1 (greyscale) or 3 (RGB)
    download: Download                              # how the files are obtained
    loader: Loader                                  # LoadRequest -> (dataset, class names); imports torch lazily
    aliases: tuple[str, ...] = ()                   # other accepted names, lower case
    class_names: tuple[str, ...] | None = None      # static names; None: read from the files
    num_classes: int | None = None                  # known without files; defaults to len(class_names)
    read_class_names: ClassNameReader | None = None # names from the files; overrides class_names when set
    from_path: bool = False                         # a path given as the dataset name is this dataset (a
                                                    # directory, or a file ending in path_suffix), and it has
                                                    # no default --data-dir; NAME:PATH names it too
    path_suffix: str | None = None                  # with from_path: the dataset is one file with this suffix
    read_channels: ChannelReader | None = None      # natural channels from the files; overrides channels when set

    def __post_init__(self) -> None:
        # A malformed entry is a bug in the registry: fail at import, naming the entry.
        where = f"dataset spec {self.name!r}"
        if not self.name or self.name != self.name.strip().lower():
            raise ValueError(f"{where}: the name must be non-empty lower case without surrounding spaces")
        if any(a != a.strip().lower() or not a for a in self.aliases):
            raise ValueError(f"{where}: aliases must be non-empty lower case, got {self.aliases!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"{where}: channels must be 1 or 3, got {self.channels!r}")
        if self.download not in DOWNLOADS:
            raise ValueError(f"{where}: download must be one of {', '.join(DOWNLOADS)}, got {self.download!r}")
        if self.path_suffix is not None and not (self.from_path and self.path_suffix.startswith(".")):
            raise ValueError(f"{where}: path_suffix needs from_path=True and a leading '.', got {self.path_suffix!r}")
        if self.class_names is None and self.read_class_names is None:
            raise ValueError(f"{where}: give class_names, read_class_names, or both")
        if self.class_names is not None:
            if self.num_classes is None:
                object.__setattr__(self, "num_classes", len(self.class_names))
            elif self.num_classes != len(self.class_names):
                raise ValueError(f"{where}: num_classes {self.num_classes} but {len(self.class_names)} class names")


def parse_image_size(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) of an image size given as a side S (square) or a (height, width) pair; DataError otherwise."""
    sides = (size,) * 2 if _is_int(size) else tuple(size) if isinstance(size, (tuple, list)) else ()
    if len(sides) != 2 or not all(_is_int(s) and s >= 1 for s in sides):
        raise DataError(f"image size must be a positive integer or a (height, width) pair of them, got {size!r}")
    return int(sides[0]), int(sides[1])


def _is_int(value: object) -> bool:
    # numpy integers are Integral; bools are too, but True as a size is a mistake.
    return isinstance(value, Integral) and not isinstance(value, bool)
