"""Library messages that do not apply to a ual run and read like a broken install, filtered by name.

Installed by ``import ual`` (before transformers, peft or bitsandbytes are imported), so the first
command a newcomer runs is not greeted by warnings about packages they never asked for:

- bitsandbytes, on CPUs with AVX512-BF16, warns at import that an optional hub kernel (package ``kernels``)
  for 4-bit matmuls on the CPU is missing: a speed hint for CPU QLoRA, printed on every command;
- DeepSpeed, imported by accelerate on machines without a GPU, warns "Setting accelerator to CPU. If you
  have GPU ... we were unable to detect it" in every process; ual logs the device it trains on instead.
"""

from __future__ import annotations

import logging

_NOISE = {
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
    "DeepSpeed": ("Setting accelerator to CPU.",),
}


class _DropPrefixes(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_library_noise() -> None:
    """Attach the filters once (idempotent)."""
    for name, prefixes in _NOISE.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefixes) for f in log.filters):
            log.addFilter(_DropPrefixes(prefixes))
