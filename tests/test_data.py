"""Tests of the datasets: generated shapes, IDX (MNIST), CIFAR-10 binary, Stanford Cars, image folders, flips."""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_cli.data import (
    DATASETS,
    DataError,
    DatasetSpec,
    LoadRequest,
    TensorImageDataset,
    class_index,
    class_names,
    list_datasets,
    load_dataset,
    random_flip,
    resolve_name,
    shapes,
)

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def offline(*args, **kwargs):
    """Stands in for a download when the network is down (tests never touch the network)."""
    raise urllib.error.URLError("network is unreachable")


def data_error(fn, *args, **kwargs) -> str:
    """The message of the DataError that ``fn`` raises; it must be a single line."""
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message
    return message


def stack(ds, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    items = [ds[i] for i in range(len(ds) if n is None else n)]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


# ---- shapes ---------------------------------------------------------------------------


def test_shapes_same_seed_same_images_and_prefix_stable():
    a, info = load_dataset("shapes", 16, num_examples=300, seed=3)
    b, _ = load_dataset("shapes", 16, num_examples=300, seed=3)
    c, _ = load_dataset("shapes", 16, num_examples=100, seed=3)
    assert info.size == 300 and info.channels == 3 and info.class_names == shapes.CLASS_NAMES
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    # Example i depends on (seed, i) only, not on how many were asked for.
    assert torch.equal(a.images[:100], c.images)


def test_shapes_other_seed_or_split_differs():
    a, _ = load_dataset("shapes", 16, num_examples=200, seed=0)
    b, _ = load_dataset("shapes", 16, num_examples=200, seed=1)
    t, _ = load_dataset("shapes", 16, num_examples=200, seed=0, split="test")
    for other in (b, t):
        differs = (a.images != other.images).flatten(1).any(dim=1)
        assert differs.float().mean() > 0.99


def test_shapes_default_size_and_value_range():
    ds, info = load_dataset("shapes", 8)
    assert info.size == len(ds) == 10_000
    x, y = ds[0]
    assert x.dtype == torch.float32 and x.shape == (3, 8, 8) and isinstance(y, int)
    xs, _ = stack(ds, 500)
    assert xs.min() >= -1.0 and xs.max() <= 1.0
    # Colours cover the whole range, and uint8 0 and 255 map exactly to -1 and 1.
    assert xs.min() < -0.95 and xs.max() > 0.95
    assert torch.equal(ds[7][0], ds.images[7].float() / 127.5 - 1)


def test_shapes_classes_balanced():
    ds, info = load_dataset("shapes", 8, num_examples=1003)
    counts = torch.bincount(ds.labels, minlength=info.num_classes)
    assert info.num_classes == len(shapes.CLASS_NAMES) == 5
    assert counts.tolist() == [201, 201, 201, 200, 200]


@pytest.mark.parametrize("size", [16, 32])
def test_shapes_areas_tell_classes_apart(size):
    # Anti-aliased coverage sums to the analytic area of each shape (in units of r^2), and the
    # areas differ enough that the nearest one names the class of nearly every single example.
    idx = np.arange(2000)
    params = shapes.shape_params(size, 0, "train", idx)
    cover = shapes.render_coverage(size, params)
    ratio = cover.sum(dim=(1, 2)) / params["r"] ** 2
    areas = torch.tensor([shapes.AREAS[n] for n in shapes.CLASS_NAMES])
    for k in range(len(areas)):
        mean = ratio[params["label"] == k].mean()
        assert abs(mean / areas[k] - 1) < 0.015
    guess = (ratio[:, None] - areas[None, :]).abs().argmin(dim=1)
    assert (guess == params["label"]).float().mean() > 0.97
    # A ring's centre is a hole; every other shape covers its centre.
    centre = cover[torch.arange(len(idx)), params["cy"].long(), params["cx"].long()]
    ring = params["label"] == shapes.CLASS_NAMES.index("ring")
    assert centre[ring].max() < 0.05 and centre[~ring].min() > 0.95


@pytest.mark.parametrize("size", [16, 28, 32, 64])
def test_shapes_any_size_inside_image_with_contrast(size):
    ds, _ = load_dataset("shapes", size, num_examples=60, channels=1)
    x = ds.images.float() / 255
    assert x.shape == (60, 1, size, size)
    corner = x[:, :, :1, :1]
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)
    assert torch.equal(border, corner[..., 0].expand_as(border))  # shapes never touch the edge
    assert ((x - corner).abs().amax(dim=(1, 2, 3)) > shapes.MIN_CONTRAST - 0.01).all()


def test_shapes_greyscale_is_luma_of_rgb():
    rgb, _ = load_dataset("shapes", 16, num_examples=50)
    grey, info = load_dataset("shapes", 16, num_examples=50, channels=1)
    luma = (rgb.images.float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert info.channels == 1
    assert (grey.images.float() - luma).abs().max() <= 0.5


def test_shapes_work_with_dataloader_workers():
    ds, _ = load_dataset("shapes", 8, num_examples=16)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=1)
    xs = torch.cat([x for x, _ in loader])
    assert torch.equal(xs, stack(ds)[0])


# ---- MNIST from the shared folder ---------------------------------------------------------


def need_mnist() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST test split not found at {MNIST_DIR}")
    return MNIST_DIR


def test_mnist_test_split_from_shared_folder():
    ds, info = load_dataset("mnist", 28, data_dir=need_mnist(), split="test")
    assert info.size == 10_000 and info.channels == 1 and info.class_names == tuple("0123456789")
    assert torch.bincount(ds.labels, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert ds[0][1] == 7
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (10_000, 1, 28, 28)
    assert int(ds.images.min()) == 0 and int(ds.images.max()) == 255
    x, _ = ds[0]
    assert x.min() == -1.0 and x.max() == 1.0


def test_mnist_resized_rgb_subset():
    ds, info = load_dataset("mnist", 16, data_dir=need_mnist(), split="test", num_examples=64, channels=3, seed=5)
    again, _ = load_dataset("mnist", 16, data_dir=need_mnist(), split="test", num_examples=64, channels=3, seed=5)
    x, _ = ds[0]
    assert info.size == 64 and info.channels == 3 and x.shape == (3, 16, 16)
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    assert torch.equal(ds.images, again.images)
    # Antialiased downsizing keeps the ink: the mean brightness barely moves.
    full, _ = load_dataset("mnist", 28, data_dir=need_mnist(), split="test")
    assert abs(ds.images.float().mean() - full.images.float().mean()) < 15


def test_mnist_missing_train_split_says_use_test():
    message = data_error(load_dataset, "mnist", 28, data_dir=need_mnist(), split="train")
    assert "train-images-idx3-ubyte[.gz]" in message and "use --split test" in message
    message = data_error(load_dataset, "mnist", 28, data_dir=need_mnist(), split="all")
    assert "use --split test" in message


# ---- fake IDX files --------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def fake_idx(folder: Path, prefix: str, n: int, gz: bool) -> np.ndarray:
    folder.mkdir(parents=True, exist_ok=True)
    images = (np.arange(n * 28 * 28) % 256).reshape(n, 28, 28).astype(np.uint8)
    write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, gz)
    return images


@pytest.mark.parametrize("gz", [False, True])
def test_fake_idx_parsed_exactly(tmp_path, gz):
    images = fake_idx(tmp_path / "fashion-mnist", "train", 3, gz)
    fake_idx(tmp_path / "fashion-mnist", "t10k", 2, gz)
    ds, info = load_dataset("fashion-mnist", 28, data_dir=tmp_path, split="all")
    assert info.size == 5 and info.class_names[9] == "Ankle boot"
    assert [ds[i][1] for i in range(5)] == [0, 1, 2, 0, 1]
    assert torch.equal(ds[2][0][0], torch.from_numpy(images[2]).float() / 127.5 - 1)


def test_large_datasets_resize_per_item_alike(tmp_path, monkeypatch):
    from diffusers_cli.data import base

    fake_idx(tmp_path, "train", 4, gz=False)
    eager, _ = load_dataset("mnist", 20, data_dir=tmp_path)
    monkeypatch.setattr(base, "EAGER_RESIZE_BYTES", 0)
    lazy, _ = load_dataset("mnist", 20, data_dir=tmp_path)
    assert eager.images.shape == (4, 1, 20, 20) and lazy.images.shape == (4, 1, 28, 28)
    assert all(torch.equal(eager[i][0], lazy[i][0]) for i in range(4))


def test_mnist_download_failure_says_where_to_put_files(tmp_path, monkeypatch):
    from diffusers_cli.data import idx

    monkeypatch.setattr(idx, "fetch_file", offline)
    message = data_error(load_dataset, "mnist", 28, data_dir=tmp_path, split="test", download=True)
    assert message.startswith("could not download mnist (https://ossci-datasets.s3.amazonaws.com/mnist/: <urlopen")
    assert message.endswith(f"in {tmp_path / 'mnist'} by hand")


def test_fake_idx_truncated_and_corrupt(tmp_path):
    fake_idx(tmp_path, "train", 3, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    message = data_error(load_dataset, "mnist", 28, data_dir=tmp_path)
    assert message.startswith(f"{path} is truncated or corrupt") and "needs 2352 bytes of data, found 2347" in message
    path.write_bytes(b"\x00\x00\x08\x01" + b"\x00" * 20)
    assert "is not an IDX file of 3-d unsigned bytes (magic 00000801" in data_error(load_dataset, "mnist", 28, tmp_path)
    path.unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    assert "is corrupt or truncated" in data_error(load_dataset, "mnist", 28, tmp_path)


def test_fake_idx_count_mismatch(tmp_path):
    fake_idx(tmp_path, "t10k", 3, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4))
    assert "has 3 images but" in data_error(load_dataset, "mnist", 28, tmp_path, split="test")


def test_mnist_absent_suggests_download(tmp_path):
    message = data_error(load_dataset, "mnist", 28, data_dir=tmp_path, split="test")
    assert "t10k-images-idx3-ubyte[.gz]" in message and "--download" in message and str(tmp_path) in message


# ---- CIFAR-10 binary ----------------------------------------------------------------------


def fake_cifar(root: Path, per_batch: int = 2) -> Path:
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    names = ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"]
    for b, name in enumerate(names + ["test_batch.bin"]):
        records = np.zeros((per_batch, 3073), dtype=np.uint8)
        for i in range(per_batch):
            records[i, 0] = (b + i) % 10
            records[i, 1:].reshape(3, 32, 32)[:] = np.array([10 * b, 100, 200 + i]).reshape(3, 1, 1)
            records[i, 1:].reshape(3, 32, 32)[0, 0, 31] = 255  # top-right pixel of the red plane
        (folder / name).write_bytes(records.tobytes())
    return folder


def test_cifar_binary_parsed_exactly(tmp_path):
    folder = fake_cifar(tmp_path)
    (folder / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n\n")
    ds, info = load_dataset("cifar10", 32, data_dir=tmp_path)
    assert info.size == 10 and info.channels == 3 and info.class_names[3] == "c3"
    x, y = ds[3]  # batch 2 (b = 1), record 1
    assert y == 2
    assert x[:, 5, 5].tolist() == pytest.approx([10 / 127.5 - 1, 100 / 127.5 - 1, 201 / 127.5 - 1])
    assert x[0, 0, 31] == 1.0 and x[0, 0, 30] != 1.0
    test, info = load_dataset("cifar10", 16, data_dir=tmp_path, split="test", channels=1)
    assert info.size == 2 and test[0][0].shape == (1, 16, 16)


def test_cifar_truncated_and_missing_split(tmp_path):
    folder = fake_cifar(tmp_path)
    (folder / "test_batch.bin").write_bytes(b"\x01" * 3000)
    message = data_error(load_dataset, "cifar10", 32, tmp_path, split="test")
    assert "3000 bytes is not a whole number of 3073-byte records" in message
    (folder / "test_batch.bin").unlink()
    assert "use --split train" in data_error(load_dataset, "cifar10", 32, tmp_path, split="test")


def test_cifar_pickled_version_refused(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"\x80\x04 not to be unpickled")
    message = data_error(load_dataset, "cifar10", 32, data_dir=tmp_path)
    assert "pickled and never read here" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz" in message


def test_cifar_download_failure_says_where_to_put_files(tmp_path, monkeypatch):
    from diffusers_cli.data import cifar

    monkeypatch.setattr(cifar, "fetch_archive", offline)
    message = data_error(load_dataset, "cifar10", 32, data_dir=tmp_path, download=True)
    assert message.startswith("could not download CIFAR-10 (<urlopen error network is unreachable>)")
    assert str(tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin") in message


# ---- image folders ---------------------------------------------------------------------


def save(path: Path, size: tuple[int, int], colour: tuple[int, int, int], mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour if mode == "RGB" else colour[0]).save(path)


def test_folder_with_class_subfolders_mixed_sizes(tmp_path):
    save(tmp_path / "dogs" / "a.png", (40, 20), (255, 0, 0))
    save(tmp_path / "dogs" / "deep" / "b.jpg", (17, 33), (0, 0, 255))
    save(tmp_path / "cats" / "c.bmp", (8, 8), (0, 255, 0), mode="L")
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    save(tmp_path / ".hidden" / "skip.png", (8, 8), (1, 2, 3))
    ds, info = load_dataset(str(tmp_path), 12)
    assert info.name == "folder" and info.class_names == ("cats", "dogs") and info.size == 3
    xs, ys = stack(ds)
    assert xs.shape == (3, 3, 12, 12) and ys.tolist() == [0, 1, 1]
    assert torch.equal(xs[0], torch.full((3, 12, 12), -1.0))  # greyscale 0 -> RGB black
    assert torch.equal(xs[1][:, 6, 6], torch.tensor([1.0, -1.0, -1.0]))
    assert (xs[2][2] > 0.95).all() and (xs[2][:2] < -0.9).all()  # JPEG blue, give or take compression


def test_folder_without_subfolders_is_one_class_and_crops_centre(tmp_path):
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    img.paste((255, 255, 255), (10, 0, 20, 10))  # right half white
    img.save(tmp_path / "split.png")
    save(tmp_path / "sub" / "x.png", (10, 10), (9, 9, 9))
    ds, info = load_dataset("folder", 8, data_dir=tmp_path, channels=1)
    assert info.class_names == ("all",) and info.channels == 1
    x, y = ds[0]  # 20x10 -> 16x8, centre crop keeps columns 4..11: four black, four white
    assert y == 0 and x.shape == (1, 8, 8)
    assert (x[0, :, :3] == -1).all() and (x[0, :, 5:] == 1).all()


def test_folder_errors(tmp_path):
    assert "no images (bmp, gif, jpeg, jpg, png, webp) found under" in data_error(load_dataset, "folder", 8, tmp_path)
    assert "needs a folder" in data_error(load_dataset, "folder", 8)
    bad = tmp_path / "a" / "bad.png"
    bad.parent.mkdir()
    bad.write_bytes(b"definitely not a png")
    assert data_error(load_dataset, tmp_path, 8) == (f"dataset image {bad} is not a readable image (truncated or corrupt): "
                                                   "not in any image format PIL knows; remove or replace the file")
    # A header that opens but pixel data cut short fails when read, still naming the file.
    Image.effect_noise((64, 64), 50).save(bad)
    bad.write_bytes(bad.read_bytes()[:200])
    ds, _ = load_dataset(tmp_path, 8)
    assert data_error(ds.__getitem__, 0).startswith(f"dataset image {bad} is not a readable image (truncated or corrupt)")


# ---- Stanford Cars ---------------------------------------------------------------------


def write_annos(path: Path, rows: list[tuple[str, int, tuple[int, int, int, int]]]) -> None:
    from scipy.io import savemat

    dtype = [(k, "O") for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    annos = np.zeros((1, len(rows)), dtype=dtype)
    for i, (fname, cls, box) in enumerate(rows):
        annos[0, i] = (*[np.uint16(v) for v in box], np.uint8(cls), fname)
    savemat(str(path), {"annotations": annos})


def fake_cars(root: Path) -> None:
    from scipy.io import savemat

    (root / "devkit").mkdir(parents=True)
    names = np.array(["AM General", "Audi", "BMW"], dtype=object)
    savemat(str(root / "devkit" / "cars_meta.mat"), {"class_names": names})
    for split, rows in {
        "train": [("00001.jpg", 2, (5, 5, 16, 16)), ("00002.jpg", 3, (1, 1, 80, 40))],
        "test": [("00001.jpg", 1, (1, 1, 80, 40))],
    }.items():
        for fname, _, (x1, y1, x2, y2) in rows:
            img = Image.new("RGB", (80, 40), (0, 0, 255))
            img.paste((255, 0, 0), (x1 - 1, y1 - 1, x2, y2))
            (root / f"cars_{split}").mkdir(exist_ok=True)
            img.save(root / f"cars_{split}" / fname, quality=95, subsampling=0)
        annos = "devkit/cars_train_annos.mat" if split == "train" else "cars_test_annos_withlabels.mat"
        write_annos(root / annos, rows)


def test_cars_devkit_layout(tmp_path):
    fake_cars(tmp_path / "stanford_cars")
    ds, info = load_dataset("cars", 8, data_dir=tmp_path, split="all")
    assert info.num_classes == 3 and info.class_names == ("AM General", "Audi", "BMW") and info.size == 3
    assert [ds[i][1] for i in range(3)] == [1, 2, 0]
    assert class_names("cars", tmp_path) == info.class_names
    whole, _ = load_dataset("cars", 8, data_dir=tmp_path)
    boxed, _ = load_dataset("cars", 8, data_dir=tmp_path, crop_boxes=True)
    assert (whole[0][0][2] > 0.9).all()  # the red box lies outside the centre crop
    assert (boxed[0][0][0] > 0.9).all() and (boxed[0][0][2] < -0.9).all()  # only the red box


def test_cars_missing_pieces(tmp_path):
    message = data_error(load_dataset, "cars", 8, data_dir=tmp_path)
    assert "no working download" in message and "devkit/cars_meta.mat" in message
    assert "Stanford Cars cannot be downloaded" in data_error(load_dataset, "cars", 8, tmp_path, download=True)
    fake_cars(tmp_path)
    (tmp_path / "cars_test_annos_withlabels.mat").unlink()
    assert "put cars_test_annos_withlabels.mat" in data_error(load_dataset, "cars", 8, tmp_path, split="test")
    (tmp_path / "cars_train" / "00002.jpg").unlink()
    assert "1 Stanford Cars images listed in cars_train_annos.mat are missing" in data_error(
        load_dataset, "cars", 8, tmp_path
    )


def test_cars_class_folders(tmp_path):
    save(tmp_path / "car_data" / "car_data" / "train" / "Audi" / "a.jpg", (30, 20), (0, 0, 0))
    save(tmp_path / "car_data" / "car_data" / "test" / "BMW" / "b.jpg", (30, 20), (0, 0, 0))
    train, info = load_dataset("cars", 8, data_dir=tmp_path)
    test, _ = load_dataset("cars", 8, data_dir=tmp_path, split="test")
    assert info.class_names == ("Audi", "BMW") and len(train) == 1 and test[0][1] == 1


# ---- names, classes, flips -----------------------------------------------------------------


def test_names_and_classes(tmp_path):
    assert [d["name"] for d in list_datasets()] == list(DATASETS)
    assert all(d["description"] and "\n" not in d["description"] for d in list_datasets())
    assert "unknown dataset 'imagenet'" in data_error(load_dataset, "imagenet", 8)
    assert "unknown split 'val'" in data_error(load_dataset, "shapes", 8, split="val")
    assert "channels must be 1 or 3" in data_error(load_dataset, "shapes", 8, channels=2)
    save(tmp_path / "a.png", (4, 4), (0, 0, 0))
    message = data_error(load_dataset, tmp_path, 4, num_examples=20)
    assert message == "asked for 20 examples but the folder has only 1; lower --num-examples"
    names = class_names("shapes")
    assert class_index("circle", names) == 0 and class_index("RING", names) == 4 and class_index("3", names) == 3
    assert class_names("Fashion_MNIST")[0] == "T-shirt/top"
    assert "unknown class 'hexagon'" in data_error(class_index, "hexagon", names)
    assert "out of range" in data_error(class_index, 5, names)


def test_random_flip_deterministic():
    x = torch.arange(1000 * 2 * 3, dtype=torch.float32).view(1000, 1, 2, 3)
    a = random_flip(x, torch.Generator().manual_seed(0))
    b = random_flip(x, torch.Generator().manual_seed(0))
    c = random_flip(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    flipped = (a != x).flatten(1).any(dim=1)
    assert torch.equal(a[flipped], x[flipped].flip(-1)) and torch.equal(a[~flipped], x[~flipped])
    assert 430 < int(flipped.sum()) < 570


# ---- the registry ------------------------------------------------------------------------


def toy_loader(request: LoadRequest) -> tuple[TensorImageDataset, tuple[str, ...]]:
    """A dataset that exists only in these tests: image i is filled with 10 * i, label i % 2."""
    n = request.num_examples or 3
    images = (torch.arange(n, dtype=torch.uint8) * 10).view(n, 1, 1, 1).expand(n, request.channels, 2, 2)
    return TensorImageDataset(images.contiguous(), torch.arange(n) % 2, request.image_hw), ("even", "odd")


TOY = DatasetSpec(
    name="toy",
    aliases=("toy-set", "toys"),
    description="flat grey squares, for tests",
    channels=1,
    class_names=("even", "odd"),
    download="not needed",
    loader=toy_loader,
)


def test_a_registered_dataset_is_picked_up_everywhere(monkeypatch):
    from typer.testing import CliRunner

    from diffusers_cli.cli import app

    monkeypatch.setitem(DATASETS, "toy", TOY)
    assert resolve_name("Toy-Set") == ("toy", None) and resolve_name("toy") == ("toy", None)
    ds, info = load_dataset("toys", (3, 5), num_examples=4)
    assert (info.name, info.channels, info.num_classes, info.size) == ("toy", 1, 2, 4)
    assert info.class_names == ("even", "odd") and class_names("toy") == ("even", "odd")
    x, y = ds[2]
    assert x.shape == (1, 3, 5) and y == 0 and torch.equal(x, torch.full((1, 3, 5), 20 / 127.5 - 1))
    rgb, info = load_dataset("toy", 4, channels=3)
    assert info.channels == 3 and rgb[1][0].shape == (3, 4, 4) and info.size == 3
    row = {"name": "toy", "description": "flat grey squares, for tests", "channels": 1, "num_classes": 2,
           "download": "not needed", "aliases": ["toy-set", "toys"]}
    assert list_datasets()[-1] == row
    result = CliRunner().invoke(app, ["datasets", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["datasets"]
    assert rows[-1] == row and [r["name"] for r in rows] == [*DATASETS]
    text = CliRunner().invoke(app, ["datasets"])
    assert text.exit_code == 0 and "toy            flat grey squares, for tests (also: toy-set, toys)" in text.stdout
    assert "unknown dataset 'toyz': use one of shapes, mnist, fashion-mnist, cifar10, cars, folder, prepared, toy" in data_error(
        load_dataset, "toyz", 4
    )


def test_builtin_specs_and_listing():
    rows = {r["name"]: r for r in list_datasets()}
    assert list(rows) == ["shapes", "mnist", "fashion-mnist", "cifar10", "cars", "folder", "prepared"]
    assert {k: (r["channels"], r["num_classes"], r["download"]) for k, r in rows.items()} == {
        "shapes": (3, 5, "not needed"),
        "mnist": (1, 10, "--download"),
        "fashion-mnist": (1, 10, "--download"),
        "cifar10": (3, 10, "--download"),
        "cars": (3, 196, "by hand only"),
        "folder": (3, None, "not applicable"),
        "prepared": (None, None, "not applicable"),
    }
    assert rows["cars"]["aliases"] == ["stanford-cars", "stanford_cars", "stanfordcars"]
    # Every alias names exactly one dataset, and no alias shadows a name.
    aliases = [a for spec in DATASETS.values() for a in spec.aliases]
    assert len(aliases) == len(set(aliases)) and not set(aliases) & set(DATASETS)
    assert all(resolve_name(a)[0] == spec.name for spec in DATASETS.values() for a in spec.aliases)
    assert shapes.CLASS_NAMES == DATASETS["shapes"].class_names == ("circle", "square", "triangle", "cross", "ring")


def test_spec_rejects_malformed_entries():
    with pytest.raises(ValueError, match="download must be one of not needed, --download"):
        DatasetSpec(name="x", description="d", channels=1, class_names=("a",), download="maybe", loader=toy_loader)
    with pytest.raises(ValueError, match="num_classes 3 but 2 class names"):
        DatasetSpec(name="x", description="d", channels=1, class_names=("a", "b"), num_classes=3,
                    download="not needed", loader=toy_loader)
    with pytest.raises(ValueError, match="give class_names, read_class_names, or both"):
        DatasetSpec(name="x", description="d", channels=1, download="not needed", loader=toy_loader)
    with pytest.raises(ValueError, match="channels must be 1 or 3, got 2"):
        DatasetSpec(name="x", description="d", channels=2, class_names=("a",), download="not needed", loader=toy_loader)
    with pytest.raises(ValueError, match="lower case"):
        DatasetSpec(name="X", description="d", channels=1, class_names=("a",), download="not needed", loader=toy_loader)


def test_registry_imports_no_torch():
    # `diffuse datasets` and --help texts read the registry: it must not pay for torch, numpy or PIL.
    code = (
        "import sys, diffusers_cli.data as d\n"
        "d.list_datasets(); d.resolve_name('CIFAR-10'); d.class_names('fashion-mnist')\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'PIL') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# ---- image sizes ------------------------------------------------------------------------


def test_square_shapes_bitwise_as_before():
    # Recorded from the code before (H, W) sizes existed: square images must not move by one bit.
    ds, _ = load_dataset("shapes", 16, num_examples=40, seed=0)
    assert int(ds.images.sum()) == 3844358
    assert hashlib.sha256(ds.images.numpy().tobytes()).hexdigest().startswith("79a2b1a26f10938db6056536a76e6027")
    grey, _ = load_dataset("shapes", 24, num_examples=40, seed=7, split="test", channels=1)
    assert int(grey.images.sum()) == 3001980
    pair, _ = load_dataset("shapes", (16, 16), num_examples=40, seed=0)
    assert torch.equal(pair.images, ds.images)
    assert (ds.image_size, ds.image_hw, pair.image_size, pair.image_hw) == (16, (16, 16), 16, (16, 16))


@pytest.mark.parametrize("hw", [(12, 20), (20, 12), (9, 32)])
def test_shapes_non_square_inside_image_with_contrast(hw):
    ds, info = load_dataset("shapes", hw, num_examples=60, seed=2)
    h, w = hw
    assert ds.images.shape == (60, 3, h, w) and ds.image_hw == hw and ds.image_size == hw and info.size == 60
    x, y = ds[0]
    assert x.shape == (3, h, w) and x.dtype == torch.float32 and y == 0
    xs, ys = stack(ds)
    assert xs.min() >= -1.0 and xs.max() <= 1.0 and ys.tolist() == [i % 5 for i in range(60)]
    grey = ds.images.float().mean(dim=1, keepdim=True)
    corner = grey[:, :, :1, :1]
    border = torch.cat([grey[..., 0, :], grey[..., -1, :], grey[..., :, 0], grey[..., :, -1]], dim=-1)
    assert torch.equal(border, corner[..., 0].expand_as(border))  # shapes never touch any edge
    # Centres spread over the long side: the shapes are not all in a square corner of the image.
    params = shapes.shape_params(hw, 2, "train", np.arange(2000))
    assert float(params["r"].max()) <= 0.38 * min(h, w)
    long_centre = params["cx"] if w > h else params["cy"]
    assert float(long_centre.min()) < 0.35 * max(h, w) and float(long_centre.max()) > 0.65 * max(h, w)


def test_folder_non_square(tmp_path):
    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    wide.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    wide.save(tmp_path / "a_wide.png")
    tall = Image.new("RGB", (10, 50), (255, 255, 255))
    tall.paste((0, 0, 0), (0, 25, 10, 50))  # top half white, bottom half black
    tall.save(tmp_path / "b_tall.png")
    ds, info = load_dataset(tmp_path, (10, 30))
    assert info.size == 2 and info.class_names == ("all",)
    assert ds.image_hw == (10, 30) and ds.image_size == (10, 30)
    (a, _), (b, _) = ds[0], ds[1]
    assert a.shape == b.shape == (3, 10, 30) and a.min() >= -1 and b.max() <= 1
    # 40x20 -> 30x15 covers 30x10; the crop keeps rows 2..11, all columns: red then blue, halves intact.
    assert torch.equal(a[:, :, :14], torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1).expand(3, 10, 14))
    assert torch.equal(a[:, :, 16:], torch.tensor([-1.0, -1.0, 1.0]).view(3, 1, 1).expand(3, 10, 14))
    # 10x50 -> 30x150 covers it; the crop keeps rows 70..79 of 150, the edge at 75 in the middle.
    assert (b[:, :4] == 1.0).all() and (b[:, 7:] == -1.0).all()


def test_file_dataset_non_square_crops_exactly(tmp_path, monkeypatch):
    from diffusers_cli.data import base

    images = fake_idx(tmp_path, "train", 4, gz=False)
    eager, _ = load_dataset("mnist", (14, 28), data_dir=tmp_path)
    # 28x28 already covers 14x28: no resampling, the centre rows 7..20 exactly.
    assert eager.images.shape == (4, 1, 14, 28) and eager.image_hw == (14, 28)
    assert torch.equal(eager[1][0][0], torch.from_numpy(images[1, 7:21]).float() / 127.5 - 1)
    monkeypatch.setattr(base, "EAGER_RESIZE_BYTES", 0)
    lazy, _ = load_dataset("mnist", (14, 28), data_dir=tmp_path)
    assert lazy.images.shape == (4, 1, 28, 28) and all(torch.equal(eager[i][0], lazy[i][0]) for i in range(4))
    wide, _ = load_dataset("mnist", (20, 40), data_dir=tmp_path)
    assert wide[0][0].shape == (1, 20, 40) and wide.image_size == (20, 40)


@pytest.mark.parametrize("bad", [0, -3, (8, 8, 8), (8, 0), (8,), "16", 2.5, True, (8, -1)])
def test_bad_image_size_is_one_line_data_error(bad):
    message = data_error(load_dataset, "shapes", bad, num_examples=2)
    assert message == f"image size must be a positive integer or a (height, width) pair of them, got {bad!r}"


def test_bad_image_size_exits_2_with_one_line(capsys):
    import typer

    from diffusers_cli.cli.common import run_job

    with pytest.raises(typer.Exit) as info:
        run_job(lambda: load_dataset("folder", (8, 8, 8), data_dir="."))
    assert info.value.exit_code == 2
    err = capsys.readouterr().err
    assert err == "diffuse: error: image size must be a positive integer or a (height, width) pair of them, got (8, 8, 8)\n"
