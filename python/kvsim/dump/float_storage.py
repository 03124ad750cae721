"""Conversions between float32 tensors and the trace's storage dtypes (float32, float16, bfloat16).

HDF5 1.10 has no bfloat16 type, so bfloat16 is stored as the upper 16 bits in a uint16 dataset
(round-to-nearest-even), tagged with the dataset attribute dtype="bfloat16".
"""
import numpy as np

STORAGE_DTYPES = ("float32", "float16", "bfloat16")
FLOAT16_MAX = 65504.0


def float32_to_bfloat16_bits(x):
    """Round float32 values to bfloat16 (nearest, ties to even); returns the uint16 bit patterns."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    nan = np.isnan(x)
    # Adding 0x7FFF plus the lowest kept bit rounds to nearest with ties to even.
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    out = ((bits + rounding) >> 16).astype(np.uint16)
    if nan.any():  # keep NaN a (quiet) NaN instead of letting the carry turn it into Inf
        out[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)
    return out


def bfloat16_bits_to_float32(bits):
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def float16_overflows(x):
    """True when a finite float32 value would become Inf in float16 (|x| rounds above 65504)."""
    x = np.asarray(x, dtype=np.float32)
    finite = np.isfinite(x)
    with np.errstate(over="ignore"):
        return bool(np.any(finite & ~np.isfinite(x.astype(np.float16))))


def encode(x, dtype):
    """float32 array -> (array to store, numpy storage dtype)."""
    if dtype == "float32":
        return np.ascontiguousarray(x, dtype=np.float32)
    if dtype == "float16":
        return np.ascontiguousarray(x, dtype=np.float32).astype(np.float16)
    if dtype == "bfloat16":
        return float32_to_bfloat16_bits(x)
    raise ValueError(f"unknown storage dtype {dtype!r}")


def numpy_storage_dtype(dtype):
    return {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[dtype]


def decode_dataset(ds):
    """Reads an h5py dataset of a trace back as float32, honouring dtype="bfloat16"."""
    data = ds[()]
    if ds.attrs.get("dtype") in ("bfloat16", b"bfloat16"):
        return bfloat16_bits_to_float32(data)
    return np.asarray(data, dtype=np.float32)
