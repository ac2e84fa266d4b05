"""Read a ``.safetensors`` file with torch alone, for machines without the `safetensors`
package (a bare GPU box with no registry: scripts/gpu_check.sh loads the bundled model there).

The format: an 8-byte little-endian header length ``n``, ``n`` bytes of JSON mapping each
tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into the bytes
after the header; an optional ``"__metadata__"`` entry), then the raw little-endian data.
`open_safetensors` uses the `safetensors` package when it is installed.
"""

from __future__ import annotations

import json
import struct

import torch

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class SafetensorsFile:
    """The tensors of one file: ``keys()`` and ``get_tensor(name)``, as `safe_open` gives."""

    def __init__(self, path: str):
        with open(path, "rb") as f:
            data = f.read()
        if len(data) < 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its header length)")
        (length,) = struct.unpack("<Q", data[:8])
        if 8 + length > len(data):
            raise ValueError(f"{path}: header length {length} runs past the end of the file")
        try:
            header = json.loads(data[8 : 8 + length])
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: corrupt safetensors header ({err})") from None
        if not isinstance(header, dict):
            raise ValueError(f"{path}: corrupt safetensors header (not a JSON object)")
        header.pop("__metadata__", None)
        self.path, self._header, self._body = path, header, memoryview(data)[8 + length :]

    def keys(self) -> list[str]:
        return list(self._header)

    def get_tensor(self, name: str) -> torch.Tensor:
        entry = self._header[name]
        if entry["dtype"] not in DTYPES:
            raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {entry['dtype']}")
        begin, end = entry["data_offsets"]
        if not 0 <= begin <= end <= len(self._body):
            raise ValueError(
                f"{self.path}: tensor {name!r} lies at bytes [{begin}, {end}) of a body of "
                f"{len(self._body)}: the file is truncated or corrupt"
            )
        dtype = DTYPES[entry["dtype"]]
        raw = bytes(self._body[begin:end])  # a copy: the tensor owns its memory
        flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return flat.reshape(entry["shape"])

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc) -> None:
        self._body = memoryview(b"")


def open_safetensors(path: str):
    """`safetensors.safe_open(path, framework="pt")` when installed, else `SafetensorsFile`."""
    try:
        from safetensors import safe_open
    except ImportError:
        return SafetensorsFile(path)
    try:
        return safe_open(path, framework="pt")
    except OSError:
        raise
    except Exception as err:  # safetensors' own SafetensorError: a truncated or corrupt file
        raise ValueError(
            f"{path}: not a readable safetensors file, truncated or corrupt ({err})"
        ) from None
