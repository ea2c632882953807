"""scripts/gpu_check.sh: its CPU self-test passes, it skips every check without CUDA, and the numerics,
compile and memory pieces it checks on a GPU behave as documented on the CPU."""
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from torch import nn

from bnnbench.runner import SweepRequest, plan
from bnnbench.tools.gpu_check import CHECKS


def _plan(**request):
    return plan(SweepRequest(methods=["ovsw"], **request)).specs[0]


@pytest.mark.slow
def test_self_test_passes_every_cpu_check(tmp_path):
    out = tmp_path / "gpu_check.json"
    r = subprocess.run([sys.executable, "-m", "bnnbench.tools.gpu_check", "--self-test", "--json", str(out)], cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "2"}, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    checks = {c["name"]: c for c in json.loads(out.read_text())["checks"]}
    assert set(checks) == set(CHECKS)
    assert {n for n, c in checks.items() if c["status"] == "SKIP"} == {"sync_free_steps", "bench"}
    assert all(c["status"] == "PASS" for n, c in checks.items() if n not in ("sync_free_steps", "bench"))
    for name in ("amp_steps", "compile", "torchrun", "deterministic"):
        assert f"PASS  {name}" in r.stdout
    assert all(v["graphs"] <= 3 and v["graph_breaks"] == 0 for v in checks["compile"]["detail"]["methods"].values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA behaviour")
def test_without_cuda_every_check_is_skipped_and_the_script_exits_0():
    script = (ROOT / "scripts" / "gpu_check.sh").read_text()
    assert "bnnbench.tools.gpu_check" in script and os.access(ROOT / "scripts" / "gpu_check.sh", os.X_OK)
    r = subprocess.run([sys.executable, "-m", "bnnbench.tools.gpu_check"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("SKIP")]
    assert len(lines) == len(CHECKS) and all("no CUDA device" in ln for ln in lines)


def test_recompiling_past_the_limit_raises_instead_of_running_eagerly():
    import torch._dynamo

    from bnnbench.engine import compiled
    from bnnbench.errors import describe_exception

    class FloatSchedule(nn.Module):
        def __init__(self):
            super().__init__()
            self.t = 0.1
            self.register_buffer("k", torch.tensor(0.1))

        def forward(self, x):
            return torch.sign(x) * self.t * self.k

    torch._dynamo.reset()
    m = compiled(FloatSchedule(), backend="eager")
    x = torch.randn(4)
    for e in range(12):                      # a buffer schedule: one graph whatever its value
        m._orig_mod.k.fill_(0.1 * (e + 1))
        m(x)
    with pytest.raises(torch._dynamo.exc.FailOnRecompileLimitHit) as info:
        for e in range(12):                  # a Python-float schedule: a new graph per value
            m._orig_mod.t = 0.1 * (e + 1)
            m(x)
    assert "keep schedules in buffers" in describe_exception(info.value)
    torch._dynamo.reset()


def test_deterministic_flag_is_a_setting_in_the_identity_and_the_default_keeps_old_hashes():
    fast, det = _plan(), _plan(deterministic=True)
    assert det.settings.deterministic is True and fast.settings.deterministic is False
    assert det.hash != fast.hash and det.changes == {"deterministic": True}
    assert "deterministic" not in fast.identity()["settings"]          # runs made before the key existed
    assert det.identity()["settings"]["deterministic"] is True
    assert _plan(sets=[("deterministic", True)]).hash == det.hash


def test_numerics_configure_records_the_flags_and_restores_the_fast_mode():
    from bnnbench.engine import numerics
    rec = numerics.configure(torch.device("cpu"), True, amp=True, compile=True)
    try:
        assert rec["deterministic"] and rec["deterministic_algorithms"] and torch.are_deterministic_algorithms_enabled()
        assert rec["amp"] is None and rec["compile"] is False and rec["tf32_conv"] is None   # CPU: no AMP, no TF32
    finally:
        rec = numerics.configure(torch.device("cpu"), False, amp=False, compile=False)
    assert not rec["deterministic_algorithms"] and not torch.are_deterministic_algorithms_enabled()


def test_compile_drops_the_last_incomplete_training_batch():
    from bnnbench.engine import make_loaders
    plain, comp = _plan(), _plan(sets=[("compile", True)])
    a, _, _ = make_loaders(plain, torch.device("cpu"), ROOT / "data")
    b, test, _ = make_loaders(comp, torch.device("cpu"), ROOT / "data")
    n, bs = a.num_samples, comp.settings.batch_size
    assert n % bs and len(a) == n // bs + 1 and len(b) == n // bs
    assert all(len(y) == bs for _, y in b) and len(test) == -(-test.num_samples // test.batch_size)


def test_peak_memory_is_reset_per_run():
    from bnnbench.engine.host import peak_memory, reset_peak_memory
    cpu = torch.device("cpu")
    if reset_peak_memory(cpu) != "run":
        pytest.skip("this OS cannot reset the resident-set peak (/proc/self/clear_refs)")
    big = torch.ones(400 * 2**20 // 4)      # 400 MiB, touched
    high = peak_memory(cpu)
    del big
    assert reset_peak_memory(cpu) == "run"
    assert peak_memory(cpu) < high - 300 * 2**20
