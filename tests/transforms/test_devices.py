import pytest
import torch

from chromabeam.transforms.devices import DeviceError, resolve_device


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error; this machine has CUDA")
def test_cuda_requested_but_absent_is_an_error():
    with pytest.raises(DeviceError, match="no usable CUDA device"):
        resolve_device("cuda")


def test_unknown_device():
    with pytest.raises(DeviceError, match="must be one of"):
        resolve_device("tpu")
