"""Tests of the datasets: generated shapes, IDX (MNIST), CIFAR-10 binary, Stanford Cars, image folders, flips."""

from __future__ import annotations

import gzip
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_cli.data import (
    DATASETS,
    DataError,
    class_index,
    class_names,
    list_datasets,
    load_dataset,
    random_flip,
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
    assert data_error(load_dataset, tmp_path, 8).startswith(f"cannot read image {bad}")
    # A header that opens but pixel data cut short fails when read, still naming the file.
    Image.effect_noise((64, 64), 50).save(bad)
    bad.write_bytes(bad.read_bytes()[:200])
    ds, _ = load_dataset(tmp_path, 8)
    assert data_error(ds.__getitem__, 0).startswith(f"cannot read image {bad}")


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
