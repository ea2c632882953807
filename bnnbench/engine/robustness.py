"""The robustness track: a finished run's model under the 15 common corruptions and under FGSM / PGD, written
to the run's ``robustness.json`` (``bnnbench/store.py``) one entry at a time, so an interrupted evaluation
resumes where it stopped.

* corruptions (``bnnbench/data/corruptions.py``): top-1 on the test images (the first ``subset`` of an
  in-memory test set, ``subset`` evenly spaced images of an ImageFolder's ``val/``, or all) under each
  corruption and severity; mCA = the mean over the 15 x 5 conditions, relative drop =
  (clean - mCA) / clean (BiBench, ICML 2023, reports the same pair for binarized networks);
* white-box FGSM and PGD at each epsilon (pixel levels, eps / 255 of the [0, 1] scale) through the model's own
  surrogate gradients (``bnnbench/engine/attacks.py``);
* transfer: PGD examples crafted on a full-precision run of the same dataset and backbone (``binarize: none``),
  evaluated on the binary model; a high white-box figure with a low transfer figure means masked gradients.

Every method sees the same corrupted images: each is drawn from a generator seeded by (seed, corruption,
severity, image index). Images are evaluated in eval mode with the integer-exact binary path, batch by batch
(BatchNorm uses running statistics, so a figure does not depend on the batch size).
"""
from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from bnnbench.config.evaluation import RobustnessRequest
from bnnbench.config.spec import RunSpec
from bnnbench.data.catalog import NORMALIZATIONS, is_folder_dataset
from bnnbench.data.corruptions import CORRUPTIONS, SEVERITIES, corrupt_images, preset_for
from bnnbench.data.loaders import folder_test_images
from bnnbench.engine.attacks import Normalizer, correct, fgsm, pgd
from bnnbench.engine.rebuild import checked_data, input_normalization, trained_model
from bnnbench.errors import BnnBenchError, ConfigError
from bnnbench.store import ROBUSTNESS, RunDir

SCHEMA = 1
BATCH = 500


def eps_key(eps: float) -> str:
    return f"{eps:g}"


class TestImages:
    """One dataset's test images (uint8, the first ``subset``) and their corrupted versions, shared by every
    run evaluated in this process; one condition is kept at a time (``run_bench.py robustness`` evaluates
    every run under a condition before making the next), so memory stays at two copies of the images."""

    def __init__(self, x: Tensor, y: Tensor, seed: int):
        self.x, self.y, self.seed = x, y, seed
        self.preset = preset_for(x.shape[2], x.shape[3])
        self._corrupted: dict[tuple[str, int], Tensor] = {}
        self.transfer: dict[tuple[str, float, int], Tensor] = {}

    def corrupted(self, name: str, severity: int) -> Tensor:
        key = (name, severity)
        if key not in self._corrupted:
            self._corrupted = {key: corrupt_images(self.x, name, severity, self.seed)}
        return self._corrupted[key]


def test_images(spec: RunSpec, data_root: Path, request: RobustnessRequest, cache: dict) -> TestImages:
    """The run's test images for ``request`` (memoised in ``cache`` by dataset, subset and seed): the first
    ``subset`` of the in-memory test set, or of an ImageFolder's ``val/`` after the evaluation's resize and
    centre crop (``bnnbench/data/loaders.py``)."""
    st = spec.settings
    key = (spec.dataset, str(data_root), st.test_subset, request.subset, request.seed)
    if key not in cache:
        if is_folder_dataset(spec.dataset):
            x, y = folder_test_images(Path(data_root), request.subset)
        else:
            data = checked_data(spec, data_root)
            n = len(data.test_y) if request.subset is None else min(request.subset, len(data.test_y))
            x, y = data.test_x[:n], data.test_y[:n]
        cache[key] = TestImages(x, y, request.seed)
    return cache[key]


def run_normalization(spec: RunSpec, data_root: Path) -> tuple:
    """(mean, std) the run's model expects its [0, 1] images normalised with."""
    if is_folder_dataset(spec.dataset):
        return NORMALIZATIONS["imagenet"]   # an ImageFolder run uses the ImageNet statistics (loaders.py)
    return input_normalization(spec, checked_data(spec, data_root))


def batches(images: Tensor, y: Tensor, device: torch.device):
    """(first index, pixel-scale float images, labels) of each batch of ``BATCH``, on ``device``."""
    for start in range(0, len(y), BATCH):
        yield start, images[start:start + BATCH].to(device).float(), y[start:start + BATCH].to(device)


def top1(model: nn.Module, norm: Normalizer, images: Tensor, y: Tensor, device: torch.device,
         attack: Callable | None = None) -> float:
    """Top-1 (%) on ``images`` (uint8 or pixel-scale float), each batch attacked by ``attack(x, y, start)``
    first when given."""
    hits = 0
    for start, x, yb in batches(images, y, device):
        if attack is not None:
            x = attack(x, yb, start)
        hits += correct(model, norm, x, yb)
    return 100.0 * hits / len(y)


def _generator(seed: int, eps: float, start: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + round(eps * 1000) * 7919 + start)


class Evaluation:
    """One run's robustness evaluation, resuming its ``robustness.json``."""

    def __init__(self, run_dir: Path, spec: RunSpec, model: nn.Module, data_root: Path, device: torch.device,
                 request: RobustnessRequest, cache: dict, on_step: Callable[[str], None] | None = None):
        self.rd, self.device, self.request, self.spec, self.model = RunDir(run_dir), device, request, spec, model
        self.images = test_images(self.spec, data_root, request, cache)
        self.norm = Normalizer.of(*run_normalization(spec, data_root), device)
        self.data_root, self.on_step = data_root, on_step or (lambda _label: None)
        self.doc = self._resume()

    def setup(self) -> dict:
        r = self.request
        return {"images": len(self.images.y), "subset": r.subset, "seed": r.seed, "preset": self.images.preset,
                "pgd_steps": r.pgd_steps, "pgd_step_size": "eps/4", "pgd_random_start": True}

    def _resume(self) -> dict:
        old = self.rd.read_robustness()
        fresh = {"schema": SCHEMA, "spec_hash": self.spec.hash, "setup": self.setup(), "corruptions": {},
                 "fgsm": {}, "pgd": {}}
        if not old or old.get("schema") != SCHEMA or old.get("spec_hash") != self.spec.hash \
                or self.request.overwrite:
            return fresh
        if old.get("setup") != self.setup():
            t = old.get("setup") or {}
            raise ConfigError(f"{self.rd.file(ROBUSTNESS)} holds figures for another setup (subset {t.get('subset')}, "
                              f"seed {t.get('seed')}, pgd_steps {t.get('pgd_steps')}, {t.get('images')} images); rerun "
                              f"with those, or with --overwrite to replace them")
        return old

    def _save(self) -> None:
        self.doc["summary"] = summarize(self.doc)
        self.rd.write_robustness(self.doc)

    def condition(self, name: str, severity: int) -> None:
        """Clean top-1 first, then top-1 under one corruption condition (skipped when recorded)."""
        if "clean_top1" not in self.doc:
            self.doc["clean_top1"] = top1(self.model, self.norm, self.images.x, self.images.y, self.device)
            self._save()
        done = self.doc["corruptions"].setdefault(name, {})
        if str(severity) not in done:
            self.on_step(f"{name} {severity}")
            done[str(severity)] = top1(self.model, self.norm, self.images.corrupted(name, severity), self.images.y,
                                       self.device)
            self._save()

    def attacks(self) -> None:
        for kind, attack in (("fgsm", self._fgsm), ("pgd", self._pgd)):
            for eps in self.request.epsilons:
                if eps_key(eps) not in self.doc[kind]:
                    self.on_step(f"{kind} {eps:g}/255")
                    self.doc[kind][eps_key(eps)] = top1(self.model, self.norm, self.images.x, self.images.y,
                                                        self.device, attack(eps))
                    self._save()

    def _fgsm(self, eps: float):
        return lambda x, y, start: fgsm(self.model, self.norm, x, y, eps)

    def _pgd(self, eps: float):
        seed = self.request.seed
        return lambda x, y, start: pgd(self.model, self.norm, x, y, eps, self.request.pgd_steps,
                                       gen=_generator(seed, eps, start))

    def transfer(self) -> None:
        src = self.request.transfer_source
        if src is None:
            self.doc.setdefault("transfer", {"note": "no full-precision source run given (--transfer-source)"})
            self._save()
            return
        entry = self.doc.get("transfer") or {}
        if entry.get("source") != Path(src).name:
            entry = {"source": Path(src).name, "pgd": {}}
        self.doc["transfer"] = entry
        for eps in self.request.epsilons:
            if eps_key(eps) not in entry["pgd"]:
                self.on_step(f"transfer {eps:g}/255")
                adv = transfer_examples(self.images, Path(src), self.data_root, self.spec, eps, self.request,
                                        self.device)
                entry["pgd"][eps_key(eps)] = top1(self.model, self.norm, adv, self.images.y, self.device)
                self._save()


def transfer_examples(images: TestImages, source: Path, data_root: Path, target: RunSpec, eps: float,
                      request: RobustnessRequest, device: torch.device) -> Tensor:
    """PGD examples (pixel scale, on the CPU) crafted on the full-precision run ``source``; memoised."""
    key = (str(source), eps, request.pgd_steps)
    if key in images.transfer:
        return images.transfer[key]
    spec, model, _ = trained_model(source, data_root, device, loaders=False)
    if (spec.dataset, spec.backbone) != (target.dataset, target.backbone) or spec.settings.binarize != "none":
        raise ConfigError(f"--transfer-source {source}: a full-precision run (binarize: none) of {target.dataset} / "
                          f"{target.backbone} is needed, not a run of {spec.dataset} / {spec.backbone} with binarize: "
                          f"{spec.settings.binarize}")
    norm = Normalizer.of(*run_normalization(spec, data_root), device)
    images.transfer[key] = torch.cat([
        pgd(model, norm, x, y, eps, request.pgd_steps, gen=_generator(request.seed, eps, start)).cpu()
        for start, x, y in batches(images.x, images.y, device)])
    return images.transfer[key]


def summarize(doc: dict) -> dict:
    """mCA over the corruption conditions present, their count, whether all 15 x 5 are, the relative drop."""
    values = [v for sev in doc.get("corruptions", {}).values() for v in sev.values()]
    complete = all(len(doc.get("corruptions", {}).get(n, {})) == len(SEVERITIES) for n in CORRUPTIONS)
    mca = statistics.fmean(values) if values else None
    clean = doc.get("clean_top1")
    drop = (clean - mca) / clean if (mca is not None and clean) else None
    return {"mca": mca, "conditions": len(values), "complete": complete, "relative_drop": drop}


def open_evaluation(run_dir: Path, data_root: Path, device: torch.device, request: RobustnessRequest,
                    cache: dict, on_step: Callable[[str], None] | None = None) -> Evaluation:
    """A finished run's model with its robustness evaluation, resumed from its ``robustness.json``; its
    figures are made by :meth:`Evaluation.condition`, :meth:`~Evaluation.attacks` and
    :meth:`~Evaluation.transfer`, in that order (:func:`evaluate_many`)."""
    request.check("robustness")
    spec, model, _ = trained_model(run_dir, data_root, device, loaders=False)
    return Evaluation(run_dir, spec, model, data_root, device, request, cache, on_step)


def evaluate_many(dirs: list[Path], data_root: Path, device: torch.device, request: RobustnessRequest,
                  on_step: Callable[[str], None] | None = None,
                  on_error: Callable[[Path, Exception], None] | None = None) -> tuple[list[Evaluation], list[Path]]:
    """Evaluate several finished runs condition by condition (each corrupted set is made once for all of
    them, then dropped), then their attacks; a run that raises a BnnBenchError is reported to ``on_error``
    and dropped. Returns (the finished evaluations, the runs that failed)."""
    step = on_step or (lambda _label: None)
    cache: dict = {}
    failed: list[Path] = []

    def each(work, items):
        kept = []
        for item in items:
            try:
                kept.append(work(item))
            except BnnBenchError as exc:
                failed.append(item if isinstance(item, Path) else item.rd.path)
                (on_error or (lambda _p, _e: None))(failed[-1], exc)
        return kept
    evals = each(lambda d: open_evaluation(d, data_root, device, request, cache,
                                           lambda label, d=d: step(f"{d.name[-40:]}: {label}")), dirs)
    for name in request.corruptions:
        for sev in request.severities:
            evals = each(lambda ev, n=name, s=sev: (ev.condition(n, s), ev)[1], evals)
    evals = each(lambda ev: (ev.attacks(), ev.transfer(), ev)[2], evals)
    return evals, failed


def is_complete(run_dir: Path, request: RobustnessRequest) -> bool:
    """Whether ``run_dir``'s robustness.json already holds every figure ``request`` asks for (same setup)."""
    doc = RunDir(run_dir).read_robustness() or {}
    setup = doc.get("setup") or {}
    if (setup.get("subset"), setup.get("seed"), setup.get("pgd_steps")) != (request.subset, request.seed,
                                                                              request.pgd_steps):
        return False
    have = doc.get("corruptions") or {}
    wanted = all(str(s) in have.get(n, {}) for n in request.corruptions for s in request.severities)
    attacks = all(eps_key(e) in (doc.get(k) or {}) for k in ("fgsm", "pgd") for e in request.epsilons)
    transfer = request.transfer_source is None or all(
        eps_key(e) in ((doc.get("transfer") or {}).get("pgd") or {}) for e in request.epsilons)
    return "clean_top1" in doc and wanted and attacks and transfer
