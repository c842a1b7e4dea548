"""The live-host fixture makers' safetensors writer (tests/e2e/random_weights.py write_checkpoint), checked without
safetensors: it streams one tensor at a time, so the file is read back here by the format's own layout (an 8-byte
little-endian header size, a JSON header of dtype, shape and data offsets, then the data)."""

import itertools
import json
import struct

import torch
from e2e import random_weights as rw

TABLE = {"encoder.proj.weight": (6, 4), "encoder.proj.bias": (6,), "encoder.norm.weight": (4,),
         "text.shared.weight": (5, 4), "text.block.0.weight": (4, 4)}


def read_back(path):
    """(header, {key: tensor}) of a safetensors file; the data must end where the last tensor does."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    dtypes = {code: dtype for dtype, code in rw.SAFETENSORS_DTYPES.items()}
    body = data[8 + length:]
    assert len(body) == max(entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__")
    tensors = {key: torch.frombuffer(bytearray(body[slice(*entry["data_offsets"])]), dtype=dtypes[entry["dtype"]])
               .reshape(entry["shape"]) for key, entry in header.items() if key != "__metadata__"}
    return header, tensors


def test_each_tensor_is_written_as_drawn_with_its_prefixs_dtype(tmp_path):
    path = tmp_path / "fixture.safetensors"
    rw.write_checkpoint(str(path), TABLE, torch.bfloat16, 3, {"family": "test"},
                        dtype_by_prefix={"text.": torch.float8_e4m3fn})
    header, tensors = read_back(path)
    torch.manual_seed(3)
    expected = {key: rw.random_tensor(key, shape, TABLE) for key, shape in TABLE.items()}
    assert header["__metadata__"] == {"format": "pt", "family": "test"}
    assert list(tensors) == list(TABLE)
    for key, tensor in tensors.items():
        dtype = torch.float8_e4m3fn if key.startswith("text.") else torch.bfloat16
        assert tensor.dtype == dtype and tuple(tensor.shape) == TABLE[key]
        assert torch.equal(tensor.float(), expected[key].to(dtype).float()), key
    offsets = [entry["data_offsets"] for key, entry in header.items() if key != "__metadata__"]
    assert all(end == start for (_, end), (start, _) in itertools.pairwise(offsets)), "no gap between tensors"
    assert not (tmp_path / "fixture.safetensors.tmp").exists()
