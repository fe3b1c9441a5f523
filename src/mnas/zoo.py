"""Named reference architectures, as data (TF / timm block strings), in one registry.

Sources: tensorflow/tpu `models/official/mnasnet/mnasnet_models.py` (a1, b1, small, d1, d1-320),
timm `efficientnet.py` (mobilenetv2_100), the MnasNet paper's table 6 (single-op variants of A1).
"""

from __future__ import annotations

import builtins
import re
from dataclasses import dataclass, replace
from pathlib import Path

from mnas.arch_strings import parse_arch, parse_arch_string, to_tf_string
from mnas.architecture import Architecture
from mnas.errors import UserError
from mnas.textfiles import load_yaml, read_text


@dataclass(frozen=True)
class ZooEntry:
    name: str
    arch_string: str
    resolution: int = 224
    description: str = ""

    def arch(self) -> Architecture:
        return parse_arch_string(self.arch_string).with_name(self.name)


_A1 = ("r1_k3_s11_e1_i32_o16_noskip,r2_k3_s22_e6_i16_o24,r3_k5_s22_e3_i24_o40_se0.25,"
       "r4_k3_s22_e6_i40_o80,r2_k3_s11_e6_i80_o112_se0.25,r3_k5_s22_e6_i112_o160_se0.25,"
       "r1_k3_s11_e6_i160_o320")

_ENTRIES = [
    ZooEntry("mnasnet_a1", _A1, description="MnasNet-A1 (paper fig. 7a; timm semnasnet_100)"),
    ZooEntry("mnasnet_b1",
             "r1_k3_s11_e1_i32_o16_noskip,r3_k3_s22_e3_i16_o24,r3_k5_s22_e3_i24_o40,"
             "r3_k5_s22_e6_i40_o80,r2_k3_s11_e6_i80_o96,r4_k5_s22_e6_i96_o192,"
             "r1_k3_s11_e6_i192_o320_noskip",
             description="MnasNet-B1, no SE (torchvision mnasnet1_0; timm mnasnet_100)"),
    # TF's first block is i16_o8 after an 8-wide stem (so no skip there); timm's ds_r1_k3_s1_c8
    # adds the 8->8 residual. We follow timm, whose weights the parity test loads.
    ZooEntry("mnasnet_small",
             "stem_k3_s2_c8_nre,r1_k3_s11_e1_i8_o8,r1_k3_s22_e3_i8_o16,r2_k3_s22_e6_i16_o16,"
             "r4_k5_s22_e6_i16_o32_se0.25,r3_k3_s11_e6_i32_o32_se0.25,"
             "r3_k5_s22_e6_i32_o88_se0.25,r1_k3_s11_e6_i88_o144",
             description="MnasNet-small (paper table 4 search2; timm mnasnet_small)"),
    ZooEntry("mnasnet_d1",
             "r1_k3_s11_e9_i32_o24,r3_k3_s22_e9_i24_o36,r5_k3_s22_e9_i36_o48,"
             "r4_k5_s22_e9_i48_o96,r5_k7_s11_e3_i96_o96,r3_k3_s22_e9_i96_o80,"
             "r1_k7_s11_e6_i80_o320_noskip",
             description="MnasNet-D1, MnasFPN's jointly searched backbone"),
    ZooEntry("mnasnet_d1_320",
             "r3_k5_s11_e6_i32_o24,r4_k7_s22_e9_i24_o36,r5_k5_s22_e9_i36_o48,"
             "r5_k7_s22_e6_i48_o96,r5_k3_s11_e9_i96_o144,r5_k5_s22_e6_i144_o160,"
             "r1_k7_s11_e9_i160_o320",
             resolution=320, description="MnasNet-D1 for 320x320 input"),
    ZooEntry("mobilenet_v2",
             "stem_k3_s2_c32_nr6,ds_r1_k3_s1_c16,ir_r2_k3_s2_e6_c24,ir_r3_k3_s2_e6_c32,"
             "ir_r4_k3_s2_e6_c64,ir_r3_k3_s1_e6_c96,ir_r3_k3_s2_e6_c160,ir_r1_k3_s1_e6_c320,head_c1280",
             description="MobileNetV2 1.0 (timm mobilenetv2_100; torchvision mobilenet_v2)"),
]


def _single_op_a1(expand: int, kernel: int) -> ZooEntry:
    """Paper table 6: A1's layers, widths, SE and skips with one op type (MBConv e, kxk) throughout."""
    a1 = parse_arch_string(_A1)
    blocks = tuple(replace(b, op="mbconv", expand=expand, kernel=kernel) for b in a1.blocks)
    return ZooEntry(f"a1_mbconv{expand}_k{kernel}",
                    to_tf_string(replace(a1, blocks=blocks)),
                    description=f"MnasNet-A1 with MBConv{expand} {kernel}x{kernel} only (paper table 6)")


_ENTRIES += [_single_op_a1(e, k) for e in (3, 6) for k in (3, 5)]
_REGISTRY: dict[str, ZooEntry] = {e.name: e for e in _ENTRIES}


def list() -> builtins.list[str]:  # the registry API is mnas.zoo.list(), as timm.list_models()
    """Every registered model name, in registry order."""
    return builtins.list(_REGISTRY)


def entry(name: str) -> ZooEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown zoo model {name!r}; known: {', '.join(_REGISTRY)}") from None


def get(name: str, width_mult: float = 1.0) -> Architecture:
    """The named architecture, scaled by `width_mult` (TF rounding; head width stays 1280)."""
    return entry(name).arch().scaled(width_mult)


def resolution(name: str) -> int:
    return entry(name).resolution


_ARCH_TEXT = re.compile(r"\s*(\{|(ds|ir|cn|stem)_|r[0-9]+_k)")


def is_arch_text(text: str) -> bool:
    """The text reads as an architecture (JSON or a timm/TF block string), not as a name or path."""
    return bool(_ARCH_TEXT.match(text))


def resolve(text: str, width_mult: float = 1.0) -> tuple[Architecture, str]:
    """A zoo name, an architecture file (JSON / YAML / a training checkpoint) or an arch string.

    Returns the architecture and a display name.
    """
    if text in _REGISTRY:
        return get(text, width_mult), text if width_mult == 1.0 else f"{text}_x{width_mult:g}"
    # A text that reads as an architecture (JSON or a block string) is one, and is never looked up
    # as a path first: a long TF string is not a valid file name (ENAMETOOLONG).
    # (A file whose name merely looks like one, ir_best.json, is still read when the text is not.)
    if _ARCH_TEXT.match(text):
        try:
            arch = parse_arch(text)
        except UserError:
            if not _is_file_safely(text):
                raise
        else:
            return arch.scaled(width_mult), arch.name or arch.id
    path = Path(text)
    if _exists(text):
        arch = _arch_from_file(path)
        label = arch.name or path.stem
        return arch.scaled(width_mult), label
    raise UserError(f"{text!r} is not a zoo model, a file or an architecture string; "
                    f"zoo models: {', '.join(_REGISTRY)} (see `mnas zoo`)")


def _exists(text: str) -> bool:
    try:
        return Path(text).exists()
    except OSError as exc:  # a name too long (ENAMETOOLONG), or not encodable
        raise UserError(f"{text[:60]!r}{'...' if len(text) > 60 else ''} cannot be looked up as a file "
                        f"({exc.strerror or exc}); give a zoo name, a shorter path or an architecture string") from None
    except ValueError:  # a NUL byte
        return False


def _is_file_safely(text: str) -> bool:
    try:
        return Path(text).exists()
    except (OSError, ValueError):
        return False


def _arch_from_file(path: Path) -> Architecture:
    if path.is_dir():
        for candidate in ("checkpoint.pt", "best.pt", "arch.json"):
            if (path / candidate).is_file():
                return _arch_from_file(path / candidate)
        raise UserError(f"{path} is a folder without checkpoint.pt or arch.json")
    if path.suffix in (".pt", ".pth"):
        from mnas.train.checkpoint import checkpoint_arch  # lazy: torch and the trainer only for checkpoints

        return checkpoint_arch(path)
    text = read_text(path, "architecture file")
    if path.suffix in (".yaml", ".yml"):
        data = load_yaml(text, f"architecture file {path}")
        if isinstance(data, str):
            return parse_arch(data)
        if not isinstance(data, dict):
            raise UserError(f"{path} must hold an architecture mapping or string")
        return Architecture.from_dict(data)
    try:  # what went wrong names the file
        if path.suffix == ".json" or text.lstrip().startswith("["):
            if not text.lstrip().startswith("{"):
                raise UserError('it must hold one JSON object like {"blocks": [...]}')
            return Architecture.from_json(text.strip())
        return parse_arch(text)
    except UserError as exc:
        raise UserError(f"architecture file {path}: {exc}") from None
