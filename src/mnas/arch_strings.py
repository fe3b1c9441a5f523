"""Architecture strings: timm-style and TF MnasNet block strings, written and read losslessly.

`to_timm_string` / `to_tf_string` write an `Architecture` as comma-joined block strings framed by
mnas `stem_...` and `head_...` items; `parse_arch_string` reads either form strictly (an unknown,
duplicated or malformed token is an error naming the item and the token); `parse_arch` also takes
JSON. timm writes `ds`, `ir`, `cn` and `_noskip`; TF has no op type (e1 means no expansion); mnas
adds `_pool` for the pooling shortcut and, in TF strings, `_conv` for a regular conv, so every
architecture round-trips.
"""

from __future__ import annotations

import re
from typing import Any

from mnas.architecture import Architecture, BlockSpec, format_number
from mnas.errors import UserError

_ACT_TOKEN = {"relu": "nre", "relu6": "nr6", "swish": "nsw", "hard_swish": "nhs"}
_TOKEN_ACT = {v: k for k, v in _ACT_TOKEN.items()}


def to_timm_string(arch: Architecture) -> str:
    """timm arch_def block strings, comma-joined, framed by mnas `stem_...` and `head_...` items.

    Block strings follow timm (`ds`, `ir`, `cn`; `_noskip`); mnas adds `_pool` for the pooling
    shortcut. Example: ``stem_k3_s2_c32_nre,ds_r1_k3_s1_e1_c16_noskip,...,head_c1280``.
    """
    items = [f"stem_k3_s{arch.stem_stride}_c{arch.stem_filters}_{_ACT_TOKEN[arch.act]}"]
    items += [_timm_block(b) for b in arch.blocks]
    items.append(f"head_c{arch.head_filters}")
    return ",".join(items)


def to_tf_string(arch: Architecture) -> str:
    """TF MnasNet block strings (`r2_k3_s22_e6_i16_o24_se0.25`), comma-joined, with stem/head items.

    TF has no op type (e1 means no expansion); mnas adds `_conv` for a regular conv and `_pool`
    for the pooling shortcut so every architecture round-trips.
    """
    items = [f"stem_k3_s{arch.stem_stride}_c{arch.stem_filters}_{_ACT_TOKEN[arch.act]}"]
    in_f = arch.stem_filters
    for b in arch.blocks:
        items.append(_tf_block(b, in_f))
        in_f = b.filters
    items.append(f"head_c{arch.head_filters}")
    return ",".join(items)


def _timm_block(b: BlockSpec) -> str:
    kind = {"conv": "cn", "ds": "ds", "mbconv": "ir"}[b.op]
    s = f"{kind}_r{b.layers}_k{b.kernel}_s{b.stride}_e{format_number(b.expand)}_c{b.filters}"
    if b.se_ratio:
        s += f"_se{format_number(b.se_ratio)}"
    if b.op == "conv":  # timm's ConvBnAct has no skip unless `_skip` is given
        s += {"identity": "_skip", "pool": "_pool", "none": ""}[b.skip]
    else:
        s += {"identity": "", "pool": "_pool", "none": "_noskip"}[b.skip]
    return s


def _tf_block(b: BlockSpec, in_f: int) -> str:
    s = f"r{b.layers}_k{b.kernel}_s{b.stride}{b.stride}_e{format_number(b.expand)}_i{in_f}_o{b.filters}"
    if b.se_ratio:
        s += f"_se{format_number(b.se_ratio)}"
    if b.op == "conv":
        s += "_conv"
    s += {"identity": "", "pool": "_pool", "none": "_noskip"}[b.skip]
    return s


# ASCII digits only: \d and int() also read other scripts' digits ("k３" would read as k3).
_KEY_TOKEN = re.compile(r"(se|r|k|s|e|c|i|o)([0-9]+(?:\.[0-9]+)?)", re.ASCII)
_SKIP_FLAGS = ("noskip", "skip", "pool")
#: Per item kind: the number keys it takes, the ones it must have, and its flags.
_GRAMMAR: dict[str, tuple[set[str], set[str], set[str]]] = {
    "stem": ({"k", "s", "c"}, {"c"}, set(_TOKEN_ACT)),
    "head": ({"c"}, {"c"}, set()),
    "ds": ({"r", "k", "s", "e", "c", "se"}, {"r", "k", "s", "c"}, {"noskip", "pool"}),
    "ir": ({"r", "k", "s", "e", "c", "se"}, {"r", "k", "s", "c"}, {"noskip", "pool"}),
    "cn": ({"r", "k", "s", "e", "c", "se"}, {"r", "k", "s", "c"}, {"skip", "pool"}),
    "tf": ({"r", "k", "s", "e", "i", "o", "se"}, {"r", "k", "s", "e", "i", "o"}, {"conv", "noskip", "pool"}),
}


class _Item:
    """One comma-separated item of an architecture string, read strictly: every token must be a
    known key with a number or a known flag, at most once."""

    def __init__(self, item: str, position: int) -> None:
        self.text, self.position = item, position
        tokens = item.split("_")
        self.kind = tokens[0] if tokens[0] in _GRAMMAR else ("tf" if re.fullmatch(r"r[0-9]+", tokens[0]) else "")
        if not self.kind:
            raise self.error(f"unknown block type {tokens[0]!r}: expected timm block strings like "
                             "'ir_r2_k3_s2_e6_c24_se0.25' or TF block strings like 'r2_k3_s22_e6_i16_o24_se0.25'")
        keys, required, flags = _GRAMMAR[self.kind]
        self.values: dict[str, str] = {}
        self.flags: set[str] = set()
        for j, tok in enumerate(tokens[0 if self.kind == "tf" else 1:], start=1 if self.kind == "tf" else 2):
            m = _KEY_TOKEN.fullmatch(tok)
            if m and m.group(1) in keys:
                seen = m.group(1) in self.values
                self.values[m.group(1)] = m.group(2)
            elif tok in flags:
                seen = tok in self.flags
                self.flags.add(tok)
            else:
                allowed = sorted(f"{k}<n>" for k in keys) + sorted(flags)
                raise self.error(f"unknown or malformed token {tok!r} (token {j}); allowed: {', '.join(allowed)}")
            if seen:
                raise self.error(f"token {tok!r} (token {j}) repeats an earlier one")
        missing = sorted(required - set(self.values))
        if missing:
            raise self.error(f"missing {', '.join(k + '<n>' for k in missing)}")
        if len(self.flags & set(_SKIP_FLAGS)) > 1:
            raise self.error(f"more than one skip flag ({', '.join(sorted(self.flags & set(_SKIP_FLAGS)))})")

    def error(self, message: str) -> UserError:
        return UserError(f"architecture string item {self.position} ({self.text!r}): {message}")

    def int(self, key: str, default: int | None = None) -> int:
        if key not in self.values:
            assert default is not None
            return default
        value = self.values[key]
        if not (value.isascii() and value.isdigit()):
            raise self.error(f"'{key}{value}' must be a whole number")
        return int(value)

    def float(self, key: str, default: float) -> float:
        return float(self.values[key]) if key in self.values else default

    def skip(self, default: str) -> str:
        if "pool" in self.flags:
            return "pool"
        if "noskip" in self.flags:
            return "none"
        return "identity" if "skip" in self.flags else default

    def block(self, **fields: Any) -> BlockSpec:
        try:
            return BlockSpec(**fields)
        except UserError as exc:
            raise self.error(str(exc)) from None


def parse_arch_string(text: str) -> Architecture:
    """Parse a timm-style or TF-style architecture string (comma- or space-separated items).

    Strict: an unknown, duplicated or malformed token is an error naming the item and the token,
    never silently ignored; a stem item may only come first and a head item only last.
    """
    raw = [t for t in re.split(r"[,\s]+", text.strip()) if t]
    if not raw:
        raise UserError("empty architecture string")
    items = [_Item(t, i) for i, t in enumerate(raw, start=1)]
    stem = items.pop(0) if items[0].kind == "stem" else None
    head = items.pop() if items and items[-1].kind == "head" else None
    for it in items:
        if it.kind in ("stem", "head"):
            raise it.error(f"a {it.kind} item may only come {'first' if it.kind == 'stem' else 'last'}, once")
    if not items:
        raise UserError(f"no blocks in architecture string {text!r}")
    blocks: list[BlockSpec] = []
    first_in = None
    for it in items:
        if it.kind == "tf":
            stride = it.values["s"]
            if len(stride) != 2 or stride[0] != stride[1]:
                raise it.error("strides must be a pair of equal digits like s11 or s22")
            expand = it.float("e", 1.0)
            op = "conv" if "conv" in it.flags else ("ds" if expand == 1 else "mbconv")
            if first_in is None:
                first_in = it.int("i")
            blocks.append(it.block(op=op, expand=expand, kernel=it.int("k"), se_ratio=it.float("se", 0.0),
                                   skip=it.skip("identity"), filters=it.int("o"), layers=it.int("r"),
                                   stride=int(stride[0])))
        else:
            op = {"ds": "ds", "ir": "mbconv", "cn": "conv"}[it.kind]
            blocks.append(it.block(op=op, expand=it.float("e", 1.0), kernel=it.int("k"),
                                   se_ratio=it.float("se", 0.0), skip=it.skip("none" if op == "conv" else "identity"),
                                   filters=it.int("c"), layers=it.int("r"), stride=it.int("s")))
    stem_filters = stem.int("c") if stem else (first_in if first_in is not None else 32)
    if stem is not None and stem.int("k", 3) != 3:
        raise stem.error("the stem is a 3x3 convolution: use k3 or leave k out")
    acts = [a for a in (stem.flags if stem else ()) if a in _TOKEN_ACT]
    if len(acts) > 1:
        raise stem.error(f"more than one activation ({', '.join(sorted(acts))})")  # type: ignore[union-attr]
    return Architecture(blocks=tuple(blocks), stem_filters=stem_filters, stem_stride=stem.int("s", 2) if stem else 2,
                        head_filters=head.int("c") if head else 1280, act=_TOKEN_ACT[acts[0]] if acts else "relu")


def parse_arch(text: str) -> Architecture:
    """An architecture from JSON text or a timm/TF string."""
    stripped = text.strip()
    if stripped.startswith("{"):
        return Architecture.from_json(stripped)
    return parse_arch_string(stripped)
