"""The benchmarks name the kernels they ran with: an AVX-512 machine held to AVX2 must not read as AVX-512."""

import torch

from script_helpers import load_script

benchmark_peers = load_script("benchmark_peers")


def test_kernel_description_names_the_instruction_set_limits_in_force(monkeypatch):
    for name in benchmark_peers.KERNEL_LIMITS:
        monkeypatch.delenv(name, raising=False)
    in_use = f"torch kernels {torch.backends.cpu.get_cpu_capability()}"
    assert benchmark_peers.kernel_description() == in_use

    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert benchmark_peers.kernel_description() == f"{in_use} (MKL_ENABLE_INSTRUCTIONS=AVX2, ONEDNN_MAX_CPU_ISA=AVX2)"


def test_cpu_line_gives_model_cores_flags_and_kernels():
    machine = {"cpu": "Some CPU", "cores": 2, "flags": {"avx2": True, "avx512f": False},
               "kernels": "torch kernels AVX2 (ATEN_CPU_CAPABILITY=avx2)"}
    assert benchmark_peers.cpu_line(machine) == ("CPU: Some CPU (2 cores; avx2 yes, avx512f no); "
                                                 "torch kernels AVX2 (ATEN_CPU_CAPABILITY=avx2)")
