"""The input map of a tensor model (RECGUARD_OIP_INPUTS, `--oip-input`): which request fields make up each
of its OIP v2 input tensors, in which datatype.

A typical Triton or KServe model takes `INPUT__0`, FP32 [B, N], not one input per field. Each entry
`NAME=FIELD[,FIELD...][:DATATYPE]` says tensor NAME holds those fields, column j of a row being the
j-th field, shape [B, number of fields]; the datatype defaults to FP32. Entries are separated by ';'.
"""

from __future__ import annotations

from dataclasses import dataclass

DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
             "FP64", "BYTES")
"""The OIP datatypes a mapped input may have."""
DEFAULT_DATATYPE = "FP32"


@dataclass(frozen=True, slots=True)
class TensorInput:
    """One input tensor of a tensor model: its name, the request fields it holds in order, its datatype."""

    name: str
    fields: tuple[str, ...]
    datatype: str = DEFAULT_DATATYPE


def parse_inputs(text: str) -> list[TensorInput]:
    """The tensors of an input map; ValueError naming the entry that is not NAME=FIELD[,FIELD...][:DATATYPE]."""
    tensors: list[TensorInput] = []
    for entry in (part.strip() for part in text.split(";")):
        if not entry:
            continue
        name, equals, rest = (part.strip() for part in entry.partition("="))
        columns, _, datatype = rest.rpartition(":") if ":" in rest else (rest, "", DEFAULT_DATATYPE)
        fields = tuple(field.strip() for field in columns.split(","))
        if not equals or not name or not all(fields):
            raise ValueError(f"{entry!r} is not NAME=FIELD[,FIELD...][:DATATYPE]")
        datatype = datatype.strip().upper()
        if datatype not in DATATYPES:
            raise ValueError(f"{entry!r}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
        tensors.append(TensorInput(name, fields, datatype))
    names = [tensor.name for tensor in tensors]
    fields = [field for tensor in tensors for field in tensor.fields]
    for what, values in (("tensor", names), ("field", fields)):
        doubled = sorted({value for value in values if values.count(value) > 1})
        if doubled:
            raise ValueError(f"{what} {doubled[0]!r} named twice")
    return tensors


def valid_inputs(text: str) -> bool:
    """True for an input map parse_inputs reads."""
    try:
        parse_inputs(text)
    except ValueError:
        return False
    return True
