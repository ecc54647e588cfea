"""Triton's binary tensor data extension (KServe's server reads it too), in and out.

A binary body is a JSON header of `Inference-Header-Content-Length` bytes followed by the raw bytes
of every tensor whose `parameters` hold `binary_data_size`, in the order the tensors are listed:
little-endian, row major, no padding; a BYTES element is a 4-byte little-endian length and then its
bytes. An output is answered in binary when its request entry says `"binary_data": true`, or, when
it says nothing, when the request's parameters say `"binary_data_output": true`; the answer then
carries `Inference-Header-Content-Length` too.

Reading turns such a body into the JSON document it stands for (each binary tensor's values put in
its `data`, `binary_data_size` taken out), so the OIP shape reads one kind of document; writing
moves the chosen outputs' values back into raw bytes.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any, Collection, Mapping

from proxy import json_codec
from proxy.shapes.request import BadRequest, decode_json

BINARY_HEADER = "Inference-Header-Content-Length"
"""The header that says how long the JSON part of a binary body is, in bytes."""
BINARY_CONTENT_TYPE = "application/octet-stream"
SIZE_PARAMETER = "binary_data_size"
BINARY_OUTPUT = "binary_data"
ALL_BINARY = "binary_data_output"

FORMATS = {"BOOL": "?", "UINT8": "B", "UINT16": "H", "UINT32": "I", "UINT64": "Q", "INT8": "b", "INT16": "h",
           "INT32": "i", "INT64": "q", "FP16": "e", "FP32": "f", "FP64": "d"}
"""The struct format of each fixed-size OIP datatype; BYTES is length-prefixed, BF16 has no Python type."""
BYTES = "BYTES"
_LENGTH = struct.Struct("<I")
_FLOAT_MAX = {"f": 3.4028234663852886e38, "e": 65504.0}
"""The largest finite FP32 and FP16 values."""


class BinaryError(ValueError):
    """A binary body (or a binary part of one) that cannot be read or written."""


def header_length(value: str | None, body_size: int) -> int | None:
    """The JSON header's length from an Inference-Header-Content-Length value (None: no header).

    Raises BadRequest unless it is a whole number of bytes within the body."""
    if value is None:
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        raise BadRequest(f"{BINARY_HEADER} must be the JSON header's length in bytes, got {value[:32]!r}")
    length = int(text)
    if length > body_size:
        raise BadRequest(f"{BINARY_HEADER} says {length} bytes of JSON but the body has {body_size}")
    return length


def read_request(body: bytes, length: int) -> Any:
    """The JSON document a binary request stands for, each binary input's values in its `data`.

    Raises BadRequest for a header that is not JSON or tensors whose bytes do not add up."""
    try:
        document = decode_json(body[:length])
    except BadRequest as exc:
        raise BadRequest(f"the JSON header of a binary request ({BINARY_HEADER}: {length}): {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        return document  # the shape says what is missing, as it does for a JSON body
    try:
        _unpack(document["inputs"], memoryview(body)[length:], "input")
    except BinaryError as exc:
        raise BadRequest(str(exc)) from None
    return document


def read_answer(body: bytes, length_header: str) -> Any:
    """The JSON document a model's binary answer stands for; BinaryError when it cannot be read."""
    text = length_header.strip()
    if not text.isascii() or not text.isdigit() or int(text) > len(body):
        raise BinaryError(f"answer's {BINARY_HEADER} {length_header[:32]!r} does not fit its {len(body)} bytes")
    length = int(text)
    try:
        document = json.loads(body[:length])
    except (ValueError, UnicodeDecodeError):
        raise BinaryError("answer's JSON header is not JSON") from None
    if isinstance(document, dict) and isinstance(document.get("outputs"), list):
        _unpack(document["outputs"], memoryview(body)[length:], "output")
    return document


def binary_outputs(request: Mapping[str, Any], names: Collection[str]) -> set[str]:
    """Which of the answer's outputs `names` the request asks for in binary."""
    parameters = request.get("parameters")
    default = isinstance(parameters, dict) and parameters.get(ALL_BINARY) is True
    asked = {entry["name"]: entry.get("parameters") for entry in request.get("outputs") or []
             if isinstance(entry, dict) and isinstance(entry.get("name"), str)}
    chosen = set()
    for name in names:
        own = asked.get(name)
        own_choice = own.get(BINARY_OUTPUT) if isinstance(own, dict) else None
        if own_choice is True or (own_choice is None and default):
            chosen.add(name)
    return chosen


def write(document: Mapping[str, Any], binary: Collection[str]) -> tuple[bytes, int]:
    """A document with the values of the outputs named in `binary` moved into raw bytes after it:
    the body and the JSON header's length (the Inference-Header-Content-Length to answer with)."""
    raw: list[bytes] = []
    outputs = []
    for output in document["outputs"]:
        if output["name"] not in binary:
            outputs.append(output)
            continue
        packed = _pack(output["datatype"], output["data"])
        raw.append(packed)
        outputs.append({**{key: value for key, value in output.items() if key != "data"},
                        "parameters": {**output.get("parameters", {}), SIZE_PARAMETER: len(packed)}})
    header = json_codec.dumps({**document, "outputs": outputs})
    return header + b"".join(raw), len(header)


def _unpack(tensors: list[Any], raw: memoryview, role: str) -> None:
    offset = 0
    for i, tensor in enumerate(tensors):
        if not isinstance(tensor, dict):
            continue  # the shape names what is wrong with it
        parameters = tensor.get("parameters")
        if not isinstance(parameters, dict) or SIZE_PARAMETER not in parameters:
            continue
        name = str(tensor.get("name", i))[:64]
        size = parameters[SIZE_PARAMETER]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BinaryError(f"{role} {name!r}: {SIZE_PARAMETER} must be a non-negative integer")
        if "data" in tensor:
            raise BinaryError(f"{role} {name!r} has both data and {SIZE_PARAMETER}: send one")
        if offset + size > len(raw):
            raise BinaryError(f"{role} {name!r}: {SIZE_PARAMETER} {size} runs past the body's end "
                              f"({len(raw) - offset} bytes left after the JSON header)")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise BinaryError(f"{role} {name!r}: shape must be a list of non-negative integers")
        tensor["data"] = _values(tensor.get("datatype"), raw[offset:offset + size], math.prod(shape), name, role)
        tensor["parameters"] = {key: value for key, value in parameters.items() if key != SIZE_PARAMETER}
        offset += size
    if offset != len(raw):
        raise BinaryError(f"{len(raw) - offset} bytes after the last binary {role}: "
                          f"the {SIZE_PARAMETER} parameters add up to {offset}")


def _values(datatype: Any, raw: memoryview, count: int, name: str, role: str) -> list[Any]:
    if datatype == BYTES:
        return _strings(raw, count, name, role)
    fmt = FORMATS.get(datatype) if isinstance(datatype, str) else None
    if fmt is None:
        raise BinaryError(f"{role} {name!r}: datatype {str(datatype)[:16]!r} is not supported in binary; "
                          f"one of BYTES, {', '.join(FORMATS)}")
    width = struct.calcsize(fmt)
    if len(raw) != count * width:
        raise BinaryError(f"{role} {name!r}: {len(raw)} bytes do not hold {count} {datatype} values "
                          f"({count * width} bytes)")
    return list(struct.unpack(f"<{count}{fmt}", raw))


def _strings(raw: memoryview, count: int, name: str, role: str) -> list[str]:
    values = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BinaryError(f"{role} {name!r}: BYTES element {len(values)} has a cut-off length")
        (size,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise BinaryError(f"{role} {name!r}: BYTES element {len(values)} says {size} bytes, "
                              f"{len(raw) - offset} are left")
        try:
            values.append(bytes(raw[offset:offset + size]).decode("utf-8"))
        except UnicodeDecodeError:
            raise BinaryError(f"{role} {name!r}: BYTES element {len(values)} is not UTF-8 text") from None
        offset += size
    if len(values) != count:
        raise BinaryError(f"{role} {name!r}: {len(values)} BYTES elements where the shape holds {count}")
    return values


def _pack(datatype: str, data: list[Any]) -> bytes:
    if datatype == BYTES:
        encoded = [str(value).encode("utf-8") for value in data]
        return b"".join(_LENGTH.pack(len(value)) + value for value in encoded)
    fmt = FORMATS[datatype]
    if fmt in _FLOAT_MAX:
        # a model's score past the narrow float's range is that float's infinity, as numpy would make it
        top = _FLOAT_MAX[fmt]
        data = [value if abs(value) <= top else math.copysign(math.inf, value) for value in data]
    return struct.pack(f"<{len(data)}{fmt}", *data)
