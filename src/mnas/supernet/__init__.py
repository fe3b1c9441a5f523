"""Weight sharing: one supernet that holds every architecture of a search space as a path.

Train the supernet once (`train_supernet`, or any engine calling `SupernetStep`), then score many
candidates with the weights they inherit (`score`), in seconds instead of a proxy training each.
`extract(supernet, arch)` returns an ordinary `mnas.model.build_model` network with those weights,
so a candidate exports, times and fine-tunes exactly like any mnas model.

What is shared (Once-for-All style: weights are shared where their shapes nest)
------------------------------------------------------------------------------
The supernet is built for one resolution: its skeleton (stem stride, block strides) is the one
`Architecture.for_resolution(resolution)` gives, so a 224-px space used with 32-px data gets the
CIFAR skeleton, as training does. Each weight is stored once at its widest shape; a path uses its
leading slice ("the first c channels").

- Stem: shared by every path (it is not a decision).
- Block widths (`filters`): output channels are the first `filters` channels of the widest choice;
  the next layer's input follows the chosen width (its weights are sliced on the input side).
- Layers (`layers`): a block holds its largest layer count; a path with n layers runs the first n
  (layer j always has the same weights, whatever the depth).
- Ops: regular conv, depthwise-separable and MBConv are three op families with separate weights
  (their shapes do not nest). Within MBConv every expansion ratio shares one expanded weight:
  mbconv3 uses the first 3*cin expanded channels of mbconv6's expansion, depthwise and projection
  weights; a ratio whose expanded width equals the input skips the expansion conv (as in mnas.model).
- Kernels (`kernel`): the largest kernel is stored; a smaller one is the centre of the next larger
  kernel times a learned (k*k x k*k) transformation per kernel size and layer conv, initialised to
  the identity (Once-for-All's kernel transformation matrices, chained 7 -> 5 -> 3). Extraction
  materialises the transformed kernel.
- Squeeze-excite (`se_ratio`): one SE per op family and layer; channels sliced as the op's; its
  reduce width is mnas.model's rule max(1, int(cin * se_ratio)) of the LAYER INPUT width cin, so
  every ratio and width slices the same reduce/expand weights. se_ratio 0 skips it.
- Shortcuts (`skip`): identity and "none" have no weights. The pooling shortcut's 1x1 projection
  (first layer of a block, where widths differ) is one per layer, shared by the op families, sliced
  on both sides.
- BatchNorm: belongs to the conv before it, so it is per op family, sliced like its conv. Running
  statistics trained with the supernet are an average over paths; scoring re-estimates them per
  candidate (`reestimate_bn`: reset, then the exact mean over K training batches).
- Residual scales: per layer position and op family, a per-channel factor on the body's last BN
  (`LAST_BN`), used only by paths whose layer adds a shortcut and initialised to zero, so every
  residual layer starts as its shortcut (what `stable_init_` does for one network: without it
  these deep narrow networks barely learn in a few hundred steps). A "none" path of the same layer
  uses the BN unscaled. Extraction multiplies the BN's weight and bias by the factor.
- Head: the 1x1 head conv is shared, its input sliced to the last block's width; pooling, dropout
  and the classifier are shared as they are.

Training (`SupernetStep`, `train_supernet`)
-------------------------------------------
Paths of step t come from `mnas.data.mix_seed(seed, t, k)` only (a resumed run and every DDP rank
train the same paths). Rules: "spos" trains one uniform random path per step; "sandwich" trains
the largest path on the labels, then the smallest and `num_random` random paths on the largest
path's soft predictions (in-place distillation), gradients summed.
The largest path takes every decision at its largest (filters, layers, kernel, se_ratio; the op
with the most multiply-adds per pixel at that block's width and kernel: in the MnasNet spaces a
regular 5x5 conv from about 12 channels up, mbconv6 below; skip "pool", else "identity": the most
shortcut weights). The smallest takes every decision at its smallest (the op with the fewest
multiply-adds, ds in the MnasNet spaces; skip "none" where the space offers it).
Every parameter gets a gradient (zero if unused) in every backward, so DistributedDataParallel
needs no `find_unused_parameters`; kernel transforms get no weight decay (`supernet_param_groups`).

Do not `torch.compile` the supernet: its forward takes the path as an argument, and every new path
would compile again. Compile an extracted network instead.

Scoring (`score`, `score_one`)
------------------------------
Per candidate: extract, re-estimate BN on K training batches (no augmentation, the same batches for
every candidate), fold BN into the convolutions, then top-1 on the held-out `data.val` images, in
eager torch or ONNX Runtime (`backend`). `scoring_data` loads the batches once for many candidates.

Files: `save_supernet` / `load_supernet` (weights + space + resolution + classes + free-form meta;
a supernet of another space, resolution or class count is refused with one line).
"""

from mnas.supernet.extract import extract
from mnas.supernet.io import SUPERNET_FILE, load_supernet, save_supernet, supernet_path
from mnas.supernet.network import Supernet, op_macs_per_pixel
from mnas.supernet.sampling import RULES, random_path, step_paths
from mnas.supernet.score import (
    SCORING_BACKENDS,
    ScoringData,
    accuracy,
    fold_bn_,
    onnx_accuracy,
    onnx_session,
    reestimate_bn,
    score,
    score_one,
    scoring_data,
)
from mnas.supernet.step import SupernetStep, soft_cross_entropy
from mnas.supernet.training import supernet_param_groups, train_supernet

__all__ = [
    "RULES",
    "SCORING_BACKENDS",
    "SUPERNET_FILE",
    "ScoringData",
    "Supernet",
    "SupernetStep",
    "accuracy",
    "extract",
    "fold_bn_",
    "load_supernet",
    "onnx_accuracy",
    "onnx_session",
    "op_macs_per_pixel",
    "random_path",
    "reestimate_bn",
    "save_supernet",
    "score",
    "score_one",
    "scoring_data",
    "soft_cross_entropy",
    "step_paths",
    "supernet_param_groups",
    "supernet_path",
    "train_supernet",
]
