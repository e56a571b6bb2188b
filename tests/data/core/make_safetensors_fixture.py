"""Writes fixture.safetensors with the reference `safetensors` package.

Run from this directory:  python make_safetensors_fixture.py
tests/core/safetensors_python_test.cpp checks the committed output without
Python; the values follow formulas restated there:
  f32   [2, 3]  F32  i * 0.5 - 1        (i = 0..5, row-major)
  f16   [4]     F16  i * 0.25 - 0.5
  i64   [3]     I64  (i - 1) * 10**12
  i8    [5]     I8   i * 30 - 64
  flags [4]     BOOL i % 2 == 0
  empty [0, 3]  F32
metadata: {"format": "np", "source": "make_safetensors_fixture.py"}
"""
import numpy as np
from safetensors.numpy import save_file

tensors = {
    "f32": (np.arange(6, dtype=np.float32) * 0.5 - 1).reshape(2, 3),
    "f16": np.arange(4, dtype=np.float16) * np.float16(0.25) - np.float16(0.5),
    "i64": (np.arange(3, dtype=np.int64) - 1) * 10**12,
    "i8": (np.arange(5, dtype=np.int64) * 30 - 64).astype(np.int8),
    "flags": np.arange(4) % 2 == 0,
    "empty": np.zeros((0, 3), dtype=np.float32),
}
save_file(tensors, "fixture.safetensors",
          metadata={"format": "np", "source": "make_safetensors_fixture.py"})
