"""Test-wide setup: a fake 8-device CPU platform so sharding tests run on a laptop."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The AOT tests load libtpu (to describe TPU topologies); several test processes may do so at
# once (pytest-xdist workers, CLI subprocesses), which libtpu's lockfile forbids by default.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
