"""Parameters and Multiply-Adds of the evaluation protocol, counted two ways.

Both counts run `torch.utils.flop_counter` on the `meta` device (seconds, no memory, no weights) over every
input of the protocol (each scale of its canvas, twice with flips); Multiply-Adds = FLOPs / 2.

* **plain** — what this PyTorch code executes: each convolution on its own output grid.
* **tf** — the same network counted as tfprof counts the official TensorFlow graph, the convention of the
  paper's Multiply-Adds (its model zoo figures are tfprof's). TF runs every atrous convolution, regular
  and depthwise (`tf.nn.convolution` / `depthwise_conv2d` with rate > 1), through `with_space_to_batch`:
  the input is padded and split into rate² sub-images on which the convolution runs at rate 1, then
  `batch_to_space` crops the padding off again. tfprof counts the convolution on the padded tensor
  (`space_to_batch_size`). That padding is why the plain count sits 3–9% under the paper's rows with
  atrous ASPP branches; counted, Table 5 (Xception-65, the official layout) lands within 0.3%.

tfprof also counts a few element-wise ops (residual `Add`, `BiasAdd` of the logits, pooling, `ArgMax`):
together under 0.05% of these networks, left out. It does not count `FusedBatchNorm`, `Relu`,
`ResizeBilinear` or `SpaceToBatchND` at all, and neither do we.

The metric keys (`protocol_cost`, logged by every run as `speed/*`):
    speed/multiply_adds     plain count, billions, what this code executes
    speed/multiply_adds_tf  TF-graph count, billions, the one to compare with the paper's tables
    speed/parameters        millions
"""
from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from .protocol import PAPER_CROP, EvalProtocol, scale_dimension

aten = torch.ops.aten

MULTIPLY_ADDS, MULTIPLY_ADDS_TF, PARAMETERS = "speed/multiply_adds", "speed/multiply_adds_tf", "speed/parameters"


def space_to_batch_size(size: int, rate: int) -> int:
    """Output positions per spatial dimension that tfprof counts for a stride-1 'SAME' atrous conv.

    `_with_space_to_batch_base_paddings` pads (k − 1) · rate in all; `required_space_to_batch_paddings`
    then pads the end until size + (k − 1) · rate is a multiple of the rate; the conv runs VALID on the
    rate² sub-images, so it produces rate · ceil(size / rate) positions per dimension, whatever k.
    """
    return rate * math.ceil(size / rate)


def plain_conv_flop(x_shape, w_shape, bias, stride, padding, dilation, transposed, *args, out_shape, **kwargs) -> int:
    """FLOPs of a convolution as executed here: torch's own formula, on the conv's output grid."""
    return conv_flop_count(x_shape, w_shape, out_shape, transposed)


def tf_conv_flop(x_shape, w_shape, bias, stride, padding, dilation, transposed, *args, out_shape, **kwargs) -> int:
    """FLOPs of a convolution as tfprof counts TF's graph (a `FlopCounterMode` formula for aten.convolution).

    A dilated conv is counted on its space-to-batch grid (`space_to_batch_size`). A dilated conv with a
    stride (TF refuses those; none of our networks has one) is counted plainly.
    """
    if not transposed and all(s == 1 for s in stride) and any(d > 1 for d in dilation):
        out_shape = [*out_shape[:2], *(space_to_batch_size(n, d) for n, d in zip(out_shape[2:], dilation))]
    return conv_flop_count(x_shape, w_shape, out_shape, transposed)


def _no_flops(*args, **kwargs) -> int:
    return 0


def _by_overload(formulas: dict) -> dict:
    """FLOP formulas keyed by op packet and by each of its overloads: `FlopCounterMode` looks a formula up
    by packet, but first tries to decompose every op whose *overload* it does not know — into primitives
    on the meta device, which made counting several times slower."""
    return {op: formula for packet, formula in formulas.items()
            for op in (packet, *(getattr(packet, name) for name in packet.overloads()))}


#: Element-wise, normalisation, resizing and pooling ops of these networks: zero FLOPs in both counts, as
#: in torch's counter. tfprof counts `Add`, `Mean` and `MaxPool` at about one FLOP per element (under
#: 0.05% of these networks) and `FusedBatchNorm`, `Relu`, `ResizeBilinear`, `ConcatV2` not at all.
_UNCOUNTED = dict.fromkeys((aten.native_batch_norm, aten.relu, aten.relu_, aten.hardtanh, aten.hardtanh_, aten.add,
                            aten.add_, aten.upsample_bilinear2d, aten.cat, aten.mean, aten.max_pool2d_with_indices,
                            aten.empty), _no_flops)
PLAIN_FORMULAS = _by_overload({**_UNCOUNTED, aten.convolution: plain_conv_flop, aten._convolution: plain_conv_flop})
TF_FORMULAS = _by_overload({**_UNCOUNTED, aten.convolution: tf_conv_flop, aten._convolution: tf_conv_flop})


@dataclass(frozen=True)
class MultiplyAdds:
    """Multiply-Adds of the same computation, plain (as executed here) and as tfprof counts the TF graph."""

    plain: int
    tf: int

    def __add__(self, other: "MultiplyAdds") -> "MultiplyAdds":
        return MultiplyAdds(self.plain + other.plain, self.tf + other.tf)

    def __mul__(self, factor: int) -> "MultiplyAdds":
        return MultiplyAdds(self.plain * factor, self.tf * factor)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def count_multiply_adds(net: nn.Module, size: tuple[int, int] = (PAPER_CROP, PAPER_CROP),
                        scales: Sequence[float] = (1.0,), flip: bool = False) -> MultiplyAdds:
    """Multiply-Adds of evaluating `net` (as it is: its output stride) on a `size` canvas at `scales`.

    `net` should live on the meta device (see `build_on_meta`); it is run in eval mode and restored.
    Scaled sizes follow the official rounding (`scale_dimension`); a flip doubles everything.
    """
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    plain = FlopCounterMode(display=False, custom_mapping=PLAIN_FORMULAS)
    tf = FlopCounterMode(display=False, custom_mapping=TF_FORMULAS)
    with plain, tf, torch.no_grad():
        for s in scales:
            net(torch.empty(1, 3, *(scale_dimension(d, s) for d in size), device=device))
    net.train(was_training)
    return MultiplyAdds(plain.get_total_flops() // 2, tf.get_total_flops() // 2) * (2 if flip else 1)


def build_on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a network without allocating its weights (never downloads weights: call with weights=None)."""
    with torch.device("meta"):
        return build()


# -- the cost of a configuration, cached: the ablation plans count many rows that share their network --------

def _config_key(net_config: dict) -> str:
    """The network's architecture: weights never matter, and the output stride is the protocol's."""
    architecture = {k: v for k, v in net_config.items() if k not in ("weights", "output_stride")}
    return json.dumps(architecture, sort_keys=True, default=list)


def _drop_batch_norm(module: nn.Module) -> None:
    """Swap every BatchNorm for Identity, in place: zero FLOPs in both counts, and on the meta device its
    reference implementation takes 60% of the counting time."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.Identity())
        else:
            _drop_batch_norm(child)


@functools.lru_cache(maxsize=16)
def _counting_net(config_key: str, layout: str) -> tuple[nn.Module, int]:
    """The network on the meta device, without BatchNorm, and its parameter count (BatchNorm included)."""
    from .deeplab import DeepLabV3Plus

    config = json.loads(config_key)
    if layout == "resnet_beta":
        if config.get("backbone", "resnet101") not in ("resnet50", "resnet101"):
            raise ValueError(f"the ResNet beta layout replaces a torchvision ResNet, not {config['backbone']!r}")
        config["backbone"] = config.get("backbone", "resnet101") + "_beta"
    elif layout != "ours":
        raise ValueError(f"layout must be 'ours' or 'resnet_beta', got {layout!r}")
    net = build_on_meta(lambda: DeepLabV3Plus(**config))
    parameters = count_parameters(net)
    _drop_batch_norm(net)
    return net, parameters


@functools.lru_cache(maxsize=None)
def _input_cost(config_key: str, layout: str, output_stride: int, size: tuple[int, int]) -> MultiplyAdds:
    net, _ = _counting_net(config_key, layout)
    net.set_output_stride(output_stride)
    return count_multiply_adds(net, size)


@functools.lru_cache(maxsize=None)
def _train_step_flops(config_key: str, batch_shape: tuple[int, ...], output_stride: int) -> int:
    net, _ = _counting_net(config_key, "ours")  # without BatchNorm: it has no FLOP formula, counted or not
    net.set_output_stride(output_stride)
    was_training = net.training
    net.train()
    with FlopCounterMode(display=False) as counter:
        net(torch.empty(*batch_shape, device="meta")).sum().backward()
    net.zero_grad(set_to_none=True)
    net.train(was_training)
    return counter.get_total_flops()


def train_step_flops(net_config: dict, batch_shape: Sequence[int], output_stride: int) -> int:
    """FLOPs of one training step (forward and backward, torch's formulas) of the network `net_config` describes
    on a batch of this shape, counted on the meta device. Cached per (network, batch shape, output stride):
    every run of a process (benchmark phases, in-process tests) counts a network once."""
    return _train_step_flops(_config_key(net_config), tuple(batch_shape), output_stride)


def protocol_multiply_adds(net_config: dict, protocol: EvalProtocol, layout: str = "ours") -> MultiplyAdds:
    """Multiply-Adds (plain and TF-graph) of scoring one image with `protocol` on its canvas (513×513, the
    paper's counting size; a protocol without a canvas is counted on 513×513).

    `net_config`: `DeepLabV3Plus` constructor arguments (its `.config`, or the config file's
    `model.net.init_args`); weights are never loaded. `layout="resnet_beta"` counts the same network with
    the official ResNet beta backbone in place of torchvision's (`resnet101` → `resnet101_beta`: how much of
    a ResNet row's gap to the paper is the backbone layout). Cached per (network, layout,
    output stride, input size): a table's rows share most of their inputs.
    """
    protocol = protocol.resolve(net_config.get("output_stride", 16))
    canvas = protocol.canvas or (PAPER_CROP, PAPER_CROP)
    key = _config_key(net_config)
    total = MultiplyAdds(0, 0)
    for s in protocol.scales:
        total += _input_cost(key, layout, protocol.output_stride, tuple(scale_dimension(d, s) for d in canvas))
    return total * (2 if protocol.flip else 1)


def protocol_cost(net_config: dict, protocol: EvalProtocol) -> dict[str, float]:
    """The `speed/*` cost metrics of a run: `speed/multiply_adds` (plain) and `speed/multiply_adds_tf`
    (TF graph, the paper's convention) in billions for one image under `protocol` (see
    `protocol_multiply_adds`), and `speed/parameters` in millions."""
    madds = protocol_multiply_adds(net_config, protocol)
    return {MULTIPLY_ADDS: madds.plain / 1e9, MULTIPLY_ADDS_TF: madds.tf / 1e9,
            PARAMETERS: network_parameters(net_config) / 1e6}


def network_parameters(net_config: dict, layout: str = "ours") -> int:
    """Parameters of the network (`layout` as in `protocol_multiply_adds`)."""
    return _counting_net(_config_key(net_config), layout)[1]
