"""Which environments make the CLI call jax.distributed.initialize() (issue 9, defect 6).

The decision is a pure function of the --distributed flag, the environment and the number of
TPU chips on the PCI bus, so every case is tested here without a pod.
"""

import pytest

from o3video_jax.train.distributed import should_initialize

# A Cloud TPU VM pod worker started over ssh: TPU chips, no cluster variables at all (JAX
# reads the other workers from the TPU metadata server). Before the fix: not initialised.
TPU_POD_WORKER = ({}, 4)


@pytest.mark.parametrize(
    "env,chips,expected",
    [
        (*TPU_POD_WORKER, True),
        ({"JAX_PLATFORMS": "tpu"}, 4, True),
        ({"JAX_PLATFORMS": "tpu,cpu"}, 8, True),
        ({"JAX_PLATFORMS": "cpu"}, 4, False),  # a CPU run on a TPU VM (tests, tools)
        ({}, 0, False),  # a laptop
        ({"CUDA_VISIBLE_DEVICES": "0,1"}, 0, False),  # one GPU box
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234"}, 0, True),  # CPU/GPU cluster
        ({"SLURM_NTASKS": "4"}, 0, True),
        ({"SLURM_NTASKS": "1"}, 0, False),
        ({"OMPI_COMM_WORLD_SIZE": "2"}, 0, True),
        ({"TPU_WORKER_HOSTNAMES": "w0,w1"}, 0, True),
        ({"TPU_WORKER_HOSTNAMES": "localhost"}, 0, False),
    ],
)
def test_auto(env, chips, expected):
    init, why = should_initialize("auto", env, tpu_chips=chips)
    assert init is expected, why


def test_on_and_off_override_the_environment():
    assert should_initialize("on", {}, tpu_chips=0)[0] is True
    assert should_initialize("off", {"SLURM_NTASKS": "8"}, tpu_chips=4)[0] is False
    with pytest.raises(ValueError, match="auto, on or off"):
        should_initialize("yes", {}, 0)
