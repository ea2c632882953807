"""DALI's CPU pipeline on a tiny generated JPEG ImageFolder: torchvision's labels, channels_last batches,
the (seed, epoch) order of the other loaders, and a resume that starts at its batch."""
import pytest
import torch

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI not installed (pip install 'bnnbench[dali]')")


def make_folder(root, classes=("cat", "ant", "bee"), per=3):
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per):
            arr = (torch.rand(40 + 8 * i, 50, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(root / c / f"img{i}.jpg", quality=90)
    return root


def test_dali_cpu_labels_match_imagefolder(tmp_path):
    from torchvision.datasets import ImageFolder

    from bnnbench.data.dali import DaliLoader, build_pipeline, listing
    root = make_folder(tmp_path / "train")
    ref = [label for _, label in ImageFolder(str(root)).samples]
    files, labels = listing(root)
    assert labels == ref
    pipe = build_pipeline(files, labels, batch_size=len(ref), train=False, seed=0, device_id=None, threads=1,
                          size=32)
    images, got = pipe.run()
    assert [int(got.at(i)[0]) for i in range(len(ref))] == ref
    assert images.at(0).shape == (32, 32, 3)                      # HWC: channels_last batches
    loader = DaliLoader(root, 4, train=True, seed=1, device=torch.device("cpu"), workers=1)
    xs, ys = zip(*list(loader))
    assert len(xs) == len(loader) == 2 and xs[0].shape == (4, 3, 224, 224) and xs[0].dtype == torch.float32
    assert xs[0].is_contiguous(memory_format=torch.channels_last)
    assert set(torch.cat(ys).tolist()) <= {0, 1, 2}


def test_dali_order_depends_on_seed_and_epoch_and_resume_starts_at_its_batch(tmp_path):
    from bnnbench.data.dali import DaliLoader
    root = make_folder(tmp_path / "train", per=4)                # 12 images, batches of 4 over 2 ranks
    ranks = [DaliLoader(root, 2, train=True, seed=3, device=torch.device("cpu"), workers=1, shard=(r, 2))
             for r in (0, 1)]
    for r in ranks:
        r.set_epoch(1)
    orders = [r.order() for r in ranks]
    assert len(orders[0]) == len(orders[1]) == 6 and not set(orders[0]) & set(orders[1])
    again = DaliLoader(root, 2, train=True, seed=3, device=torch.device("cpu"), workers=1, shard=(0, 2))
    again.set_epoch(1)
    assert again.order() == orders[0]
    again.set_epoch(2)
    assert again.order() != orders[0]
    full = [y.tolist() for _, y in ranks[0]]
    rest = [y.tolist() for _, y in ranks[0].iter_from(1)]
    assert len(full) == 3 and rest == full[1:]
    labels = ranks[0].labels
    assert sum(full, []) == [labels[i] for i in orders[0]]
