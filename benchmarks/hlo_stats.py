"""What an optimized XLA program does per step, read from its HLO text.

A deviceless compile gives no run time, but its optimized HLO says what would run: how many
kernels (fusions and library calls), which collectives move how many bytes, whether any
convolution or matmul was left in float32, and how many grouped (depthwise) convolutions there
are. The parser reads the text form that `compiled.as_text()` prints (one instruction a line,
`%name = TYPE opcode(operands), attributes`), for GPU and TPU programs alike.

Counts are static: an instruction inside a loop body (gradient accumulation's scan) is counted
once, not once per iteration.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import numpy as np

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
# Library calls that are convolutions or matmuls (cuDNN, cuBLAS/cuBLASLt, fused attention).
_CONV_TARGETS = ("__cudnn$conv",)
_MATMUL_TARGETS = ("__cublas$gemm", "__cublas$lt$matmul", "__cudnn$fmha")
_FLOAT32 = ("f32", "f64")

_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")  # unindented header
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s+=\s+(.*)$")
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128|token)\[([\d,]*)\]")
_CALLS = re.compile(r"\bcalls=%([\w.\-]+)")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_GROUPS = re.compile(r"\b(?:feature|batch)_group_count=(\d+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s4": 1, "u4": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2}


@dataclasses.dataclass
class Instruction:
    name: str
    type: str  # the result type text: an array type or a tuple of them
    opcode: str
    operands: list[str]
    attributes: str
    computation: str


def _split_type(rest: str) -> tuple[str, str]:
    """`TYPE opcode(...)...` -> (TYPE, remainder); a tuple type is matched by its parentheses."""
    if not rest.startswith("("):
        type_text, _, remainder = rest.partition(" ")
        return type_text, remainder
    depth = 0
    for i, char in enumerate(rest):
        depth += (char == "(") - (char == ")")
        if depth == 0:
            return rest[: i + 1], rest[i + 1 :].lstrip()
    return rest, ""


def _split_call(text: str) -> tuple[str, list[str], str]:
    """`opcode(%a, %b), attrs` -> (opcode, [a, b], attrs)."""
    opcode, _, rest = text.partition("(")
    depth, end = 1, len(rest)
    for i, char in enumerate(rest):
        depth += (char == "(") - (char == ")")
        if depth == 0:
            end = i
            break
    operands = re.findall(r"%([\w.\-]+)", rest[:end])
    return opcode.strip(), operands, rest[end + 1 :]


def parse(hlo_text: str) -> list[Instruction]:
    """Every instruction of every computation in an HLO module's text."""
    instructions, computation = [], ""
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if match is None:
            header = _COMPUTATION.match(line)
            if header:
                computation = header.group(1)
            continue
        name, rest = match.groups()
        type_text, remainder = _split_type(rest)
        opcode, operands, attributes = _split_call(remainder)
        instructions.append(Instruction(name, type_text, opcode, operands, attributes, computation))
    return instructions


def array_bytes(type_text: str) -> list[int]:
    """Bytes of each array in a (tuple) type."""
    sizes = []
    for dtype, dims in _ARRAY.findall(type_text):
        count = int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64))
        width = _BYTES.get(dtype, max(1, int(re.sub(r"\D", "", dtype) or 32) // 8))
        sizes.append(count * width)
    return sizes


def _is_float32(type_text: str) -> bool:
    return any(dtype in _FLOAT32 for dtype, _ in _ARRAY.findall(type_text))


def _collective_kind(inst: Instruction) -> str | None:
    """all-reduce, all-gather, ... for sync and async (`-start`) forms; `-done` is not counted."""
    for kind in COLLECTIVES:
        if inst.opcode in (kind, f"{kind}-start"):
            return kind
    return None


def _in_forward(inst: Instruction) -> bool:
    """Whether JAX traced the op in the forward pass of a gradient (`jvp(...)` in its op_name,
    not `transpose(jvp(...))`): e.g. global BatchNorm's batch statistics."""
    match = _OP_NAME.search(inst.attributes)
    return bool(match) and "jvp(" in match.group(1) and "transpose(" not in match.group(1)


def _math_kind(inst: Instruction) -> str | None:
    """'conv' or 'matmul' for XLA ops and library calls, else None."""
    if inst.opcode == "convolution":
        return "conv"
    if inst.opcode == "dot":
        return "matmul"
    if inst.opcode == "custom-call":
        target = _TARGET.search(inst.attributes)
        target = target.group(1) if target else ""
        if target.startswith(_CONV_TARGETS):
            return "conv"
        if target.startswith(_MATMUL_TARGETS):
            return "matmul"
    return None


def summarize(hlo_text: str) -> dict:
    """Kernels, collectives (count and bytes by kind), conv/matmul dtypes, grouped convs."""
    instructions = parse(hlo_text)
    types = {inst.name: inst.type for inst in instructions}
    fused = {
        c
        for inst in instructions
        if inst.opcode == "fusion"
        for c in _CALLS.findall(inst.attributes)
    }
    kernels: Counter = Counter()
    collectives: dict[str, dict[str, int]] = {}
    math: Counter = Counter()
    fp32_ops: list[str] = []
    grouped_convs = 0
    targets: Counter = Counter()
    for inst in instructions:
        if inst.computation not in fused and inst.opcode in ("fusion", "custom-call"):
            kernels[inst.opcode] += 1
        if inst.opcode == "custom-call":
            target = _TARGET.search(inst.attributes)
            targets[target.group(1) if target else "?"] += 1
        kind = _collective_kind(inst)
        if kind is not None:
            entry = collectives.setdefault(kind, {"count": 0, "bytes": 0, "forward": 0})
            entry["count"] += 1
            entry["bytes"] += max(array_bytes(inst.type), default=0)
            entry["forward"] += _in_forward(inst)
        math_kind = _math_kind(inst)
        if math_kind is None:
            continue
        operand_types = [types.get(name, "") for name in inst.operands[:2]]
        dtype = "f32" if any(_is_float32(t) for t in operand_types) else "bf16/other"
        math[f"{math_kind}:{dtype}"] += 1
        if dtype == "f32":
            fp32_ops.append(f"{inst.computation}/{inst.name}")
        groups = [int(g) for g in _GROUPS.findall(inst.attributes)]
        if math_kind == "conv" and any(g > 1 for g in groups):
            grouped_convs += 1
    return {
        "kernels": sum(kernels.values()),
        "kernels_by_kind": dict(kernels),
        "custom_calls": dict(targets),
        "collectives": collectives,
        "convs_matmuls": dict(math),
        "fp32_convs_matmuls": fp32_ops,
        "grouped_convs": grouped_convs,
    }
