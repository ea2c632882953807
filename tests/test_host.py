"""bnnbench.engine.host: freed tensor memory stays in the process (no page faults in the steady state)."""
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from bnnbench.paths import ROOT

# four 16 MiB tensors alive at once and then all freed, eight times: glibc's defaults hand the memory back
# to the kernel after every round (16,384 minor faults a round on glibc 2.36); kept memory faults only
# while the heap first grows.
PROBE = textwrap.dedent("""
    import resource, torch
    from bnnbench.engine.host import keep_freed_memory
    applied = keep_freed_memory()
    faults = []
    for _ in range(8):
        r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ts = [torch.ones(4 * 2**20) for _ in range(4)]
        del ts
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
    print(applied, *faults)
""")


def probe(value: str) -> tuple[bool, list[int]]:
    env = {**os.environ, "BNNBENCH_KEEP_MEMORY": value}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    applied, *faults = out.stdout.split()
    return applied == "True", [int(f) for f in faults]


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_kept_memory_stops_page_faults_after_warm_up():
    applied, faults = probe("1")
    assert applied
    assert faults[0] > 4000             # the first round touches fresh pages
    assert max(faults[-4:]) < 100       # later rounds reuse them (16 MiB = 4,096 pages)


def test_opt_out_leaves_the_allocator_alone():
    applied, faults = probe("0")
    assert not applied and len(faults) == 8


def test_bad_value_is_a_config_error(monkeypatch):
    from bnnbench.engine import host
    from bnnbench.errors import ConfigError
    host.keep_freed_memory.cache_clear()  # the settings are applied once per process
    monkeypatch.setenv("BNNBENCH_KEEP_MEMORY", "yes")
    with pytest.raises(ConfigError, match="BNNBENCH_KEEP_MEMORY='yes'.*1 \\(default\\) or 0"):
        host.keep_freed_memory()
