"""Benchmark metadata: torch version, CPU ISA, threads and GPU name go into every --benchmark-json file
(pytest-benchmark adds the commit itself under commit_info)."""

from __future__ import annotations

import platform

import torch

import tcdcn_ext
from tcdcn_ext import ops


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["tcdcn_ext"] = tcdcn_ext.__version__
    machine_info["cpu_isa"] = ops.cpu_isa()
    machine_info["cpu_isas_supported"] = ops.cpu_isas_supported()
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["platform"] = platform.platform()
    machine_info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
