"""Datasets and the tensor loader."""
import pytest
import torch
from conftest import SHARED

from bnnbench.data.catalog import load_tensor_dataset, subset
from bnnbench.data.loaders import TensorLoader, crop_flip, draw_augment
from bnnbench.errors import DataError


def test_crop_flip_matches_per_image_reference():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    oy, ox, fl = torch.tensor([0, 4]), torch.tensor([3, 1]), torch.tensor([True, False])
    out = crop_flip(x, 2, oy, ox, fl)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        ref = padded[i, :, oy[i]:oy[i] + 6, ox[i]:ox[i] + 6]
        if fl[i]:
            ref = ref.flip(2)
        assert torch.equal(out[i], ref)
    oy, ox, fl = draw_augment(1000, 4, True, torch.Generator().manual_seed(0))
    assert oy.min() == 0 and oy.max() == 8 and 0.4 < fl.float().mean() < 0.6


def test_loader_order_depends_only_on_seed_and_epoch():
    x = torch.randint(0, 255, (50, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(50)
    def mk():
        return TensorLoader(x, y, 16, shuffle=True, drop_last=False, mean=(0.5,) * 3, std=(0.25,) * 3,
                            device="cpu", seed=1, crop_pad=2, flip=True)
    a, b = mk(), mk()
    a.set_epoch(3)
    b.set_epoch(3)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    b.set_epoch(4)
    assert not torch.equal(next(iter(a))[1], next(iter(b))[1])
    assert sorted(torch.cat([yb for _, yb in a]).tolist()) == list(range(50)) and len(a) == 4
    # resuming mid-epoch yields exactly the remaining batches of a full pass
    full = list(a)
    rest = list(a.iter_from(2))
    assert len(rest) == 2 and all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1])
                                  for p, q in zip(full[2:], rest))


def test_device_loader_copies_from_the_host_once_per_epoch_not_per_batch():
    """On an accelerator a batch issues no host-to-device copy and reads nothing back (the meta device
    stands in for CUDA: it has device tensors and no data, and any host read of one raises)."""
    from bnnbench.tools.transfers import TransferCounter
    x = torch.randint(0, 255, (64, 3, 8, 8), dtype=torch.uint8)
    loader = TensorLoader(x, torch.arange(64), 8, shuffle=True, drop_last=False, mean=(0.5,) * 3,
                          std=(0.25,) * 3, device="meta", seed=1, crop_pad=2, flip=True, channels_last=True)
    loader.set_epoch(0)
    batches = iter(loader)
    with TransferCounter() as first:
        xb, yb = next(batches)
    assert xb.device.type == "meta" and xb.shape == (8, 3, 8, 8) and yb.device.type == "meta"
    assert 1 <= first.h2d <= 4 and first.d2h == 0, first.ops   # the epoch's order and crop/flip parameters
    with TransferCounter() as rest:
        assert len(list(batches)) == 7
    assert rest.h2d == 0 and rest.d2h == 0, rest.ops


def test_transfer_counter_sees_copies_and_host_reads():
    from bnnbench.tools.transfers import TransferCounter
    with TransferCounter() as t:
        a = torch.ones(3).to("meta")
        b = a * torch.tensor(2.0)          # a 0-dim CPU operand is a scalar, not a copy
        a.copy_(torch.zeros(3))
    assert t.h2d == 2 and t.d2h == 0 and b.device.type == "meta", t.ops


def test_digits_is_embedded():
    d = load_tensor_dataset("digits", "/nonexistent")
    assert d.train_x.shape == (1437, 3, 32, 32) and d.test_x.shape == (360, 3, 32, 32)
    assert d.train_x.dtype == torch.uint8 and d.num_classes == 10
    assert set(d.train_y.tolist()) == set(range(10))


def test_cifar_reads_generated_folder_either_root(tiny_cifar):
    for root in (tiny_cifar, tiny_cifar.parent):
        d = load_tensor_dataset("cifar10", root, download=False)
        assert d.train_x.shape == (400, 3, 32, 32) and d.test_x.shape == (200, 3, 32, 32)
    s = subset(d, 50, 20)
    assert len(s.train_y) == 50 and len(s.test_y) == 20
    with pytest.raises(DataError, match="train_subset = 500 is larger than the 400"):
        subset(d, 500, None)


def test_missing_data_offline_error_names_data_root(tmp_path):
    with pytest.raises(DataError) as e:
        load_tensor_dataset("cifar10", tmp_path / "nothing", download=True)
    msg = str(e.value)
    assert "--data-root" in msg and "cifar-10-batches-py" in msg and "data_batch_1" in msg
    with pytest.raises(DataError, match="download is disabled"):
        load_tensor_dataset("cifar10", tmp_path / "nothing", download=False)


def test_truncated_cifar_file_is_a_data_error(tiny_cifar):
    (tiny_cifar / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="could not be read"):
        load_tensor_dataset("cifar10", tiny_cifar, download=False)


CIFAR_SHARED = SHARED / "data" / "cifar10-jpeg" / "cifar-10-batches-py"


@pytest.mark.skipif(not CIFAR_SHARED.is_dir(), reason="../shared/data/cifar10-jpeg absent")
def test_shared_cifar_copy_loads():
    d = load_tensor_dataset("cifar10", CIFAR_SHARED, download=False)
    assert d.train_x.shape == (50000, 3, 32, 32) and d.test_x.shape == (10000, 3, 32, 32)
    assert d.train_y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert torch.bincount(d.train_y).tolist() == [5000] * 10


def test_imagenet_folder_loaders(tmp_path):
    from PIL import Image

    from bnnbench.data.loaders import imagenet_loaders
    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in ("b_class", "a_class"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                arr = (torch.rand(60, 80, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(arr).save(tmp_path / split / c / f"{i}.jpg")
    train, val, classes = imagenet_loaders(tmp_path, 2, 4, workers=0, seed=0)
    assert classes == 2 and len(train) == 3 and len(val) == 2
    train.set_epoch(0)
    x, y = next(iter(train))
    assert x.shape == (2, 3, 224, 224) and y.dtype == torch.int64
    xv, yv = next(iter(val))
    assert xv.shape == (4, 3, 224, 224) and yv.tolist() == [0, 0, 0, 1]  # sorted class folders
    rest = list(train.iter_from(1))
    assert len(rest) == 2
    with pytest.raises(DataError, match="ImageFolder layout"):
        imagenet_loaders(tmp_path / "nothing", 2, 2, workers=0, seed=0)


MNIST_SHARED = SHARED / "data" / "mnist" / "MNIST" / "raw"


@pytest.mark.skipif(not MNIST_SHARED.is_dir(), reason="../shared/data/mnist absent")
def test_mnist_from_a_copy_of_the_shared_folder(tmp_path):
    import shutil
    shutil.copytree(MNIST_SHARED, tmp_path / "MNIST" / "raw")
    d = load_tensor_dataset("mnist", tmp_path, download=False)
    assert d.train_x.shape == (60000, 3, 32, 32) and d.test_x.shape == (10000, 3, 32, 32)
    assert d.num_classes == 10 and d.train_x.dtype == torch.uint8
