"""DALI's CPU pipeline on a tiny generated JPEG ImageFolder gives torchvision's labels."""
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

    from bnnbench.dali import DaliLoader, build_pipeline
    root = make_folder(tmp_path / "train")
    ref = [label for _, label in ImageFolder(str(root)).samples]
    pipe = build_pipeline(root, batch_size=len(ref), train=False, seed=0, device_id=None, threads=1,
                          size=32, shuffle=False)
    images, labels = pipe.run()
    got = [int(labels.at(i)[0]) for i in range(len(ref))]
    assert got == ref
    assert images.at(0).shape == (3, 32, 32)
    loader = DaliLoader(root, 4, train=True, seed=1, device=torch.device("cpu"), workers=1)
    xs, ys = zip(*list(loader))
    assert len(xs) == len(loader) == 2 and xs[0].shape == (4, 3, 224, 224) and xs[0].dtype == torch.float32
    assert set(torch.cat(ys).tolist()) <= {0, 1, 2}
