"""GPU probes. This machine has no GPU, so torch.cuda and NVML are replaced by fakes shaped like
the real APIs (checked below against the installed torch); everything else is real."""

import inspect
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from diag.testing import FakeCudaModule, memory_stats_dict
from probes.base import ProbeUnavailable
from probes.cuda import MEMORY_STATS_KEYS, CudaProbe, NvmlProbe

GiB = 1024**3


def _values(probe):
    return {(s.name, s.labels): s.value for s in probe.sample()}


def test_fake_has_the_shape_of_the_real_torch_cuda():
    torch = pytest.importorskip("torch")  # installed by `make test`
    for name in ("is_initialized", "device_count", "memory_stats", "get_device_properties"):
        real = getattr(torch.cuda, name)
        fake = getattr(FakeCudaModule(), name)
        real_params = [p.name for p in inspect.signature(real).parameters.values()]
        fake_params = [p.name for p in inspect.signature(fake).parameters.values()]
        assert fake_params == real_params, name
    # Every allocator key the probe reads is documented by the real memory_stats.
    doc = torch.cuda.memory_stats.__doc__
    for key in MEMORY_STATS_KEYS:
        stat = key.split(".")[0]
        assert stat in doc, key
    assert set(MEMORY_STATS_KEYS) <= set(memory_stats_dict())
    # The CPU build lacks the class itself; its type stub still declares the field.
    stub = Path(torch.__file__).parent / "_C" / "__init__.pyi"
    assert re.search(r"class _CudaDeviceProperties:[^@]*?total_memory: _?int", stub.read_text())


def test_reads_every_device_of_an_initialised_host():
    fake = FakeCudaModule(
        stats={
            0: memory_stats_dict(allocated=3 * GiB, reserved=4 * GiB, peak=5 * GiB, retries=2),
            1: memory_stats_dict(allocated=GiB, reserved=GiB, inactive_split=123, ooms=1),
        }
    )
    v = _values(CudaProbe(cuda=lambda: fake))
    d0, d1 = (("device", "0"),), (("device", "1"),)
    assert v[("cuda_allocated_bytes", d0)] == 3 * GiB
    assert v[("cuda_reserved_bytes", d0)] == 4 * GiB
    assert v[("cuda_allocated_peak_bytes", d0)] == 5 * GiB
    assert v[("cuda_alloc_retries_total", d0)] == 2
    assert v[("cuda_inactive_split_bytes", d1)] == 123
    assert v[("cuda_ooms_total", d1)] == 1
    assert v[("cuda_total_bytes", d1)] == 80 * GiB


def test_waits_for_the_host_and_never_initialises_cuda():
    fake = FakeCudaModule(initialized=False)
    probe = CudaProbe(cuda=lambda: fake)
    for _ in range(3):
        with pytest.raises(ProbeUnavailable) as info:
            probe.sample()
        assert not info.value.permanent
        assert "not initialised by the host" in info.value.reason
    assert fake.init_calls == 0
    fake.initialized = True  # the host starts using the GPU later
    assert _values(probe)


def test_without_torch_it_waits():
    with pytest.raises(ProbeUnavailable, match="torch is not imported"):
        CudaProbe(cuda=lambda: None).sample()


def test_real_cpu_torch_is_left_uninitialised():
    torch = pytest.importorskip("torch")
    calls = []
    original = torch.cuda._lazy_init
    torch.cuda._lazy_init = lambda *a, **k: calls.append(a) or original(*a, **k)
    try:
        with pytest.raises(ProbeUnavailable, match="not initialised"):
            CudaProbe().sample()
    finally:
        torch.cuda._lazy_init = original
    assert calls == []
    assert not torch.cuda.is_initialized()


@pytest.mark.e2e
def test_agent_never_imports_torch():
    # A fresh interpreter: after several ticks of every default probe, torch is still unloaded.
    code = (
        "import sys; from probes.agent import Agent; a = Agent(); "
        "[a.sampler.tick() for _ in range(3)]; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


class FakeNvml:
    """Shaped like nvidia-ml-py's pynvml module: the functions the probe calls."""

    class NVMLError(Exception):
        pass

    def __init__(self, pid, fail_init=False):
        self.pid = pid
        self.fail_init = fail_init

    def nvmlInit(self):
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("handle", index)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(total=80 * GiB, used=30 * GiB, free=50 * GiB)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return [
            SimpleNamespace(pid=self.pid, usedGpuMemory=7 * GiB),
            SimpleNamespace(pid=self.pid + 1, usedGpuMemory=20 * GiB),
            SimpleNamespace(pid=self.pid + 2, usedGpuMemory=None),
        ]


def test_nvml_per_process_and_device_memory():
    probe = NvmlProbe(pid=4242, nvml=lambda: FakeNvml(4242))
    v = _values(probe)
    d0 = (("device", "0"),)
    assert v[("gpu_process_used_bytes", d0)] == 7 * GiB
    assert v[("gpu_used_bytes", d0)] == 30 * GiB
    assert v[("gpu_total_bytes", d0)] == 80 * GiB


def test_nvml_missing_or_without_driver_is_permanent():
    def not_installed():
        raise ImportError("No module named 'pynvml'")

    with pytest.raises(ProbeUnavailable, match="nvidia-ml-py is not installed") as info:
        NvmlProbe(nvml=not_installed).sample()
    assert info.value.permanent
    with pytest.raises(ProbeUnavailable, match="Driver Not Loaded") as info:
        NvmlProbe(nvml=lambda: FakeNvml(1, fail_init=True)).sample()
    assert info.value.permanent


def test_a_cuda_oom_is_recorded_with_the_allocator_state_before_it_propagates(tmp_path):
    # torch._C._cuda_attach_out_of_memory_observer(observer) calls
    # observer(device, alloc, device_allocated, device_free) when an allocation fails; this
    # machine has no GPU, so the hook is a fake with that signature.
    from diag.history import read_run
    from diag.settings import Settings
    from probes.agent import Agent

    observers = []
    fake = FakeCudaModule(stats={0: memory_stats_dict(allocated=70 * GiB, reserved=79 * GiB)})
    probe = CudaProbe(cuda=lambda: fake, oom_attach=lambda: observers.append)
    agent = Agent(Settings(history=str(tmp_path)), probes=[probe])
    agent.start()
    try:
        agent.sampler.tick()
        (observer,) = observers  # attached once, when CUDA was first seen initialised
        agent.sampler.tick()
        assert len(observers) == 1
        observer(0, 2 * GiB, 79 * GiB, 512 * 1024 * 1024)  # what torch does on an OOM
        run = read_run(next(p for p in tmp_path.iterdir()))  # flushed at once: read it now
        (oom,) = run.events_of("cuda-oom")
        assert oom["device"] == 0 and oom["requested_bytes"] == 2 * GiB
        assert oom["allocator"]["allocated_bytes.all.current"] == 70 * GiB
        assert oom["allocator"]["reserved_bytes.all.current"] == 79 * GiB
    finally:
        agent.stop()


def test_the_torch_hook_name_is_the_one_torch_uses():
    # The CPU build has no CUDA symbols; torch's own trace rules list the hook by name.
    pytest.importorskip("torch")
    from torch._dynamo import trace_rules

    source = Path(trace_rules.__file__).read_text()
    assert '"torch._C._cuda_attach_out_of_memory_observer"' in source
