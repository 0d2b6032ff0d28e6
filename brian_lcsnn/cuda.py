"""The CUDA device: brian2cuda's ``cuda_standalone``, imported on demand.

brian2cuda 1.0b1 pins brian2 2.10.1 (Python >= 3.12); without it, choosing the CUDA device is one clear
error, not a traceback. ``lcsnn doctor`` says what is missing.
"""

from .errors import DeviceError

try:
    import brian2cuda  # noqa: F401  (registers the cuda_standalone device)
except ImportError as err:
    raise DeviceError(
        f"device cuda_standalone needs brian2cuda ({err}); install it with pip install -e '.[cuda]' on "
        "Python >= 3.12, and see lcsnn doctor"
    ) from None
