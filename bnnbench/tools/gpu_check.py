"""One command that exercises every CUDA path of the suite: ``scripts/gpu_check.sh``
(``python -m bnnbench.tools.gpu_check``).

Each check prints one line, ``PASS``/``FAIL``/``SKIP``, its name and its figure; all of them go to a JSON
file (default ``results/gpu/gpu_check.json`` on CUDA). The checks:

==================  ====================================================================================
amp_steps           every method x every backbone: 3 training steps under autocast fp16 (GradScaler) and
                    bf16; the last step's loss and gradients finite
precision           every binarizer's fp16/bf16 values and gradients against fp32 (``bnnbench/tools/precision.py``)
loaders             the torchvision ImageFolder loader and DALI (GPU decoding) on a generated ImageFolder
sync_free_steps     20 training steps of the CIFAR-style in-memory path per method under
                    ``torch.cuda.set_sync_debug_mode("warn")`` and :class:`~bnnbench.tools.transfers.TransferCounter`:
                    0 synchronisations, 0 host<->device transfers
compile             ``torch.compile`` of each method over 3 epochs of its schedule and an evaluation with a
                    smaller last batch: graph count, no graph break, no eager fallback; step time vs eager
torchrun            ``torchrun --nproc_per_node 1`` (NCCL on CUDA): a run SIGTERMed mid-epoch and resumed
                    ends with the weights of an uninterrupted run (both ``--deterministic``)
bench               ``run_bench.py bench --device cuda`` for cresnet20 (batch 256) and resnet18 (batch 128),
                    channels_last and AMP, JSON under ``results/bench/``
deterministic       two ``--deterministic`` runs give bit-identical weights
==================  ====================================================================================

Without CUDA every check is skipped, saying why, and the exit status is 0. ``--self-test`` runs the checks
that have a CPU form (bf16 autocast, gloo, DALI's CPU operators, dynamo's eager backend) on the CPU with
small sizes; the test suite runs it (``tests/test_gpu_check.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from bnnbench.data.loaders import imagenet_loaders
from bnnbench.deploy.timing import sync
from bnnbench.engine import PreemptionGuard, Run, compiled, on_device, train_step
from bnnbench.paths import ROOT
from bnnbench.plugins import ARCHITECTURES, METHODS
from bnnbench.plugins.arch import build_model
from bnnbench.runner import SweepRequest, plan
from bnnbench.store import RunDir
from bnnbench.tools.precision import compare
from bnnbench.tools.transfers import TransferCounter


@dataclass
class Check:
    name: str
    status: str          # PASS, FAIL or SKIP
    figure: str
    detail: dict = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.status:4s}  {self.name:16s}  {self.figure}"


@dataclass
class Context:
    device: torch.device
    tmp: Path
    self_test: bool      # CPU forms and small sizes

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def _verdict(name: str, ok: bool, figure: str, **detail) -> Check:
    return Check(name, "PASS" if ok else "FAIL", figure, detail)


def _grads_finite(net: nn.Module) -> bool:
    return all(bool(torch.isfinite(p.grad).all()) for p in net.parameters() if p.grad is not None)


def _model(method_name: str, arch_name: str, device: torch.device, num_classes: int = 10):
    arch = ARCHITECTURES.get(arch_name)
    method = METHODS.get(method_name)(family=arch.family)
    net = build_model(method, arch, num_classes).to(device, memory_format=torch.channels_last)
    return method, net, arch


def _batch(arch, n: int, device: torch.device, side: int | None = None, num_classes: int = 10):
    c, h, w = arch.input_size
    h, w = (side, side) if side else (h, w)
    x = torch.randn(n, c, h, w, device=device).contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, num_classes, (n,), device=device)


# --- the checks ----------------------------------------------------------------------------------------

def amp_steps(ctx: Context) -> Check:
    dtypes = [torch.bfloat16] if not ctx.cuda else [torch.float16, torch.bfloat16]
    bad, total = [], 0
    for m in METHODS.names():
        for a in ARCHITECTURES.names():
            for dt in dtypes:
                method, net, arch = _model(m, a, ctx.device)
                side = 64 if (ctx.self_test and arch.input_size[1] > 64) else None
                x, y = _batch(arch, 2 if ctx.self_test else 8, ctx.device, side)
                opt = torch.optim.SGD(net.parameters(), lr=0.01)
                scaler = torch.amp.GradScaler(ctx.device.type, enabled=dt == torch.float16 and ctx.cuda)
                for _ in range(3):
                    loss, _ = train_step(net, x, y, nn.CrossEntropyLoss(), opt, scaler, method, True,
                                         amp_dtype=dt)
                total += 1
                if not (bool(torch.isfinite(loss)) and _grads_finite(net)):
                    bad.append(f"{m}/{a}/{str(dt).removeprefix('torch.')}")
    return _verdict("amp_steps", not bad, f"{total - len(bad)}/{total} method x backbone x dtype finite",
                    failed=bad, dtypes=[str(d) for d in dtypes])


def precision(ctx: Context) -> Check:
    res = compare(ctx.device)
    bad = [f"{r.name}/{r.dtype}" for r in res if not r.ok]
    worst = max(r.grad_rel_err for r in res)
    kept = min(r.grad_kept for r in res)
    return _verdict("precision", not bad, f"{len(res)} cases: max grad rel err {worst:.2e}, min kept {kept:.4f}",
                    failed=bad, cases=[r.as_dict() for r in res])


def _image_folder(root: Path, classes=("ant", "bee", "cat"), per: int = 4) -> Path:
    from PIL import Image  # deferred: start-up: only the loaders check draws images
    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per):
                arr = (torch.rand(48 + 8 * i, 64, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(arr).save(root / split / c / f"{i}.jpg", quality=90)
    return root


def loaders(ctx: Context) -> Check:
    root = _image_folder(ctx.tmp / "imagefolder")
    train, val, classes = imagenet_loaders(root, 4, 4, workers=0, seed=0, size=32)
    seen = {}
    for name, loader in (("torchvision_train", train), ("torchvision_val", val)):
        xs = [(x, y) for x, y in on_device(loader, ctx.device)]
        seen[name] = sum(len(y) for _, y in xs)
    detail = {"classes": classes, **seen}
    try:
        import nvidia.dali  # noqa: F401 - deferred: an optional dependency (the dali extra)
    except ImportError:
        detail["dali"] = "not installed (pip install 'bnnbench[dali]')"
        return _verdict("loaders", seen["torchvision_train"] == 12 and seen["torchvision_val"] == 12,
                        f"torchvision {seen['torchvision_train']}+{seen['torchvision_val']} images; DALI not "
                        f"installed", **detail)
    from bnnbench.data.dali import DaliLoader  # deferred: an optional dependency (the dali extra)
    dali = DaliLoader(root / "train", 4, train=True, seed=0, device=ctx.device, workers=2, size=32)
    batches = list(dali)
    layout_ok = all(x.is_contiguous(memory_format=torch.channels_last) and x.device.type == ctx.device.type
                    for x, _ in batches)
    detail.update(dali_images=sum(len(y) for _, y in batches), dali_channels_last=layout_ok,
                  dali_decoder="mixed (GPU)" if ctx.cuda else "cpu")
    ok = seen["torchvision_train"] == 12 and seen["torchvision_val"] == 12 and layout_ok and \
        detail["dali_images"] == 12
    return _verdict("loaders", ok, f"torchvision {seen['torchvision_train']}+{seen['torchvision_val']} images; "
                    f"DALI {detail['dali_images']} images, {detail['dali_decoder']} decoding, channels_last "
                    f"{layout_ok}", **detail)


def _run_object(ctx: Context, method: str, sets: list[tuple[str, object]]):
    """A :class:`~bnnbench.engine.run.Run` of ``method`` on the embedded digits recipe."""
    out = ctx.tmp / f"run-{method}-{len(list(ctx.tmp.iterdir()))}"
    (spec,), _ = plan(SweepRequest(methods=[method], sets=sets, download=False))
    rd = RunDir(out / "runs" / spec.name)
    rd.path.mkdir(parents=True)
    return Run(spec, rd, ctx.device, ROOT / "data")


def sync_free_steps(ctx: Context) -> Check:
    if not ctx.cuda:
        return Check("sync_free_steps", "SKIP", "needs CUDA (set_sync_debug_mode); on CPU the test suite checks "
                     "the loader's per-batch transfers on the meta device")
    per_method = {}
    for m in METHODS.names():
        run = _run_object(ctx, m, [("batch_size", 64), ("epochs", 1), ("amp", True)])
        run.state.train_loader.set_epoch(0)
        run.state.model.train()
        first, _, sums = run.loop.start_epoch(0, None)
        batches = on_device(run.state.train_loader.iter_from(0), ctx.device)
        steps, guard = len(run.state.train_loader), PreemptionGuard()
        run.loop.step(0, 0, steps, *next(batches), sums, guard)       # the epoch's one-off copies happen here
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught, TransferCounter() as t:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for i in range(1, 21):
                    run.loop.step(0, i, steps, *next(batches), sums, guard)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchroniz" in str(w.message) for w in caught)
        per_method[m] = {"syncs": syncs, "h2d": t.h2d, "d2h": t.d2h, "ops": dict(t.ops)}
    worst = max(v["syncs"] + v["h2d"] + v["d2h"] for v in per_method.values())
    return _verdict("sync_free_steps", worst == 0, f"20 steps x {len(per_method)} methods: "
                    f"{sum(v['syncs'] for v in per_method.values())} syncs, "
                    f"{sum(v['h2d'] + v['d2h'] for v in per_method.values())} transfers", methods=per_method)


def _graphs() -> int:
    from torch._dynamo.utils import counters  # deferred: start-up: dynamo's counters load only for the compile check
    return int(counters["stats"]["unique_graphs"])


def _time_steps(model, net, method, x, y, n: int, device) -> float:
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    train_step(model, x, y, nn.CrossEntropyLoss(), opt, scaler, method, device.type == "cuda")
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        train_step(model, x, y, nn.CrossEntropyLoss(), opt, scaler, method, device.type == "cuda")
    sync(device)
    return (time.perf_counter() - t) / n


def compile_method(method_name: str, device: torch.device, backend: str, epochs: int = 3,
                   batch: int = 8) -> dict:
    """Compile ``method_name`` on cresnet20; train 2 steps in each of ``epochs`` epochs (the method's
    schedule advancing), then evaluate a full and a smaller batch. Graphs, breaks, and step times."""
    import torch._dynamo  # deferred: start-up: dynamo loads only for the compile check
    from torch._dynamo.utils import counters  # deferred: start-up: dynamo's counters load only for the compile check

    torch._dynamo.reset()
    counters.clear()
    method, net, arch = _model(method_name, "cresnet20", device)
    model = compiled(net, backend=backend)
    x, y = _batch(arch, batch, device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    for e in range(epochs):
        method.on_epoch_start(net, e, epochs)
        for _ in range(2):
            train_step(model, x, y, nn.CrossEntropyLoss(), opt, scaler, method, device.type == "cuda")
    model.eval()
    with torch.no_grad():
        model(x)
        model(x[: batch // 2])
    model.train()
    out = {"graphs": _graphs(), "graph_breaks": sum(counters["graph_break"].values())}
    if device.type == "cuda":
        out["step_s_compiled"] = _time_steps(model, net, method, x, y, 10, device)
        out["step_s_eager"] = _time_steps(net, net, method, x, y, 10, device)
    return out


def compile_check(ctx: Context) -> Check:
    backend = "inductor" if ctx.cuda else "eager"
    per, errors = {}, {}
    for m in METHODS.names():
        try:
            per[m] = compile_method(m, ctx.device, backend, batch=64 if ctx.cuda else 4)
        except Exception as exc:  # noqa: BLE001 - a recompile-limit hit or a compile error is the finding
            errors[m] = f"{type(exc).__name__}: {exc}"[:400]
    ok = not errors and all(v["graphs"] <= 3 and v["graph_breaks"] == 0 for v in per.values())
    fig = ", ".join(f"{m} {v['graphs']} graphs" + (f" {v['step_s_eager'] / v['step_s_compiled']:.2f}x"
                                                   if "step_s_compiled" in v else "") for m, v in per.items())
    return _verdict("compile", ok, f"backend {backend}: {fig}" + (f"; errors: {', '.join(errors)}" if errors else ""),
                    methods=per, errors=errors, backend=backend)


def _cli(args: list[str], out: Path, env: dict | None = None, timeout: int = 300, torchrun: bool = False):
    pre = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"] if torchrun \
        else [sys.executable]
    return subprocess.run([*pre, str(ROOT / "run_bench.py"), *args, "--out", str(out)], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def _final_weights(out: Path) -> dict:
    (d,) = (out / "runs").iterdir()
    return RunDir(d).load_checkpoint()["model"]


def _same(a: dict, b: dict) -> list[str]:
    return [k for k in a if not torch.equal(a[k], b[k])]


def _small_run_args(ctx: Context, method: str = "ovsw") -> list[str]:
    return ["--methods", method, "--device", str(ctx.device), "--no-download", "--deterministic",
            "--set", "epochs=3", "batch_size=64"]


def torchrun_check(ctx: Context) -> Check:
    args = _small_run_args(ctx)
    ref = _cli(args, ctx.tmp / "tr-ref", torchrun=True)
    # digits: 23 steps per epoch; SIGTERM at step 47 (epoch 3, step 1); the ranks stop at the check of step 50
    pre = _cli(args, ctx.tmp / "tr-pre", env={"BNNBENCH_FAULT": "step:47:SIGTERM"}, torchrun=True)
    again = _cli(args, ctx.tmp / "tr-pre", torchrun=True)
    rcs = [ref.returncode, pre.returncode, again.returncode]
    log = pre.stdout + pre.stderr
    if rcs[0] or rcs[2] or "checkpointed" not in log:
        tail = (ref.stderr + again.stderr + log)[-1500:]
        return _verdict("torchrun", False, f"exit codes {rcs}", log=tail)
    differ = _same(_final_weights(ctx.tmp / "tr-ref"), _final_weights(ctx.tmp / "tr-pre"))
    where = next((ln for ln in log.splitlines() if "checkpointed" in ln), "")
    backend = "nccl" if ctx.cuda else "gloo"
    return _verdict("torchrun", not differ, f"{backend}, preempted ({where.strip()[:80]}) and resumed: "
                    f"{len(differ)} tensors differ from the uninterrupted run", exit_codes=rcs, differ=differ)


def deterministic_check(ctx: Context) -> Check:
    args = _small_run_args(ctx, "recu")
    runs = [_cli(args, ctx.tmp / f"det-{i}") for i in range(2)]
    if any(r.returncode for r in runs):
        return _verdict("deterministic", False, f"exit codes {[r.returncode for r in runs]}",
                        log=(runs[0].stderr + runs[1].stderr)[-1500:])
    differ = _same(_final_weights(ctx.tmp / "det-0"), _final_weights(ctx.tmp / "det-1"))
    return _verdict("deterministic", not differ, f"two runs: {len(differ)} tensors differ", differ=differ)


def bench_check(ctx: Context) -> Check:
    if not ctx.cuda:
        return Check("bench", "SKIP", "needs CUDA (CPU figures: results/bench/, scripts in results/bench/COMMAND.sh)")
    out, figs = ROOT / "results" / "bench", {}
    out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(ctx.device).replace(" ", "-").lower()
    for arch, batch in (("cresnet20", 256), ("resnet18", 128)):
        path = out / f"cuda-{gpu}-{arch}-b{batch}.json"
        r = subprocess.run([sys.executable, str(ROOT / "run_bench.py"), "bench", "--device", "cuda", "--arch", arch,
                            "--batch", str(batch), "--memory-format", "channels_last", "--json", str(path)],
                           cwd=ROOT, capture_output=True, text=True, timeout=400)
        if r.returncode:
            return _verdict("bench", False, f"{arch}: exit {r.returncode}", log=(r.stdout + r.stderr)[-1500:])
        res = json.loads(path.read_text())["results"]
        figs[arch] = {m: round(v["images_per_s"]) for m, v in res.items()}
    fig = "; ".join(f"{a}: " + ", ".join(f"{m} {v} img/s" for m, v in f.items()) for a, f in figs.items())
    return _verdict("bench", True, fig, images_per_s=figs)


CHECKS: dict[str, Callable[[Context], Check]] = {
    "amp_steps": amp_steps, "precision": precision, "loaders": loaders, "sync_free_steps": sync_free_steps,
    "compile": compile_check, "torchrun": torchrun_check, "bench": bench_check, "deterministic": deterministic_check,
}


def run_checks(ctx: Context, names: list[str] | None = None, echo: Callable[[str], None] = print) -> list[Check]:
    """Run the named checks (default all) in order, printing each line as it finishes."""
    results = []
    for name in names or list(CHECKS):
        t = time.perf_counter()
        try:
            c = CHECKS[name](ctx)
        except Exception as exc:  # noqa: BLE001 - one failing check must not hide the others
            c = Check(name, "FAIL", f"{type(exc).__name__}: {exc}"[:300])
        c.detail["seconds"] = round(time.perf_counter() - t, 1)
        echo(c.line())
        results.append(c)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--self-test", action="store_true", help="run the CPU forms of the checks (small sizes)")
    p.add_argument("--only", nargs="+", choices=sorted(CHECKS), help="run these checks only")
    p.add_argument("--json", type=Path, default=None, help="where to write the results "
                   "(default results/gpu/gpu_check.json on CUDA, none otherwise)")
    args = p.parse_args(argv)
    names = args.only or list(CHECKS)
    if not args.self_test and not torch.cuda.is_available():
        for n in names:
            print(Check(n, "SKIP", "no CUDA device (torch.cuda.is_available() is False)").line())
        print("every check skipped: this machine has no CUDA device; --self-test runs the CPU forms")
        return 0
    device = torch.device("cpu" if args.self_test else "cuda")
    with tempfile.TemporaryDirectory(prefix="bnnbench-gpu-check-") as tmp:
        results = run_checks(Context(device, Path(tmp), args.self_test), names)
    path = args.json or (None if args.self_test else ROOT / "results" / "gpu" / "gpu_check.json")
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        env = {"torch": torch.__version__, "cuda": torch.version.cuda,
               "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"}
        path.write_text(json.dumps({"environment": env, "checks": [asdict(c) for c in results]}, indent=2) + "\n")
        print(f"results written to {path}")
    failed = [c.name for c in results if c.status == "FAIL"]
    print(f"{len(results) - len(failed)}/{len(results)} checks passed or skipped" +
          (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
