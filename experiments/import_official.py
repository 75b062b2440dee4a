"""Convert an official TF DeepLab checkpoint (model zoo) into one of ours; needs `requirements-tf.txt`.

    python -m experiments.import_official deeplabv3_pascal_train_aug_2018_01_04.tar.gz --output xception65_voc.ckpt
    python -m experiments.train validate --config xception65_voc.yaml --ckpt_path xception65_voc.ckpt \\
        --data.root data/VOCdevkit --model.eval_output_stride 8 --model.eval_scales [0.5,0.75,1.0,1.25,1.5,1.75] \\
        --model.eval_flip true

Writes the checkpoint and, for a full DeepLab model, `<output>.yaml`: the network's config, to pass as `--config`
(the checkpoint's `net_config` as LightningCLI reads it). docs/fidelity.md "Official checkpoints" lists the zoo.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from lightning_modules.components.aspp import DEFAULT_ATROUS_RATES
from lightning_modules.official.importer import OfficialCheckpointError, import_official
from experiments.cli.flags import add_flag


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 6,12,18, got {text!r}") from None


def network_config_yaml(checkpoint: dict, source: str) -> str:
    """The config that builds the checkpoint's network, for `experiments.train --config`."""
    # num_classes is the dataset's (experiments.train links it): left out, so fine-tuning on another dataset works
    init_args = {k: v for k, v in checkpoint["net_config"].items() if k != "num_classes"}
    config = {"model": {"net": {"class_path": "lightning_modules.components.DeepLabV3Plus", "init_args": init_args}},
              "data": {"normalization": "inception"}}
    header = f"# The network of an official checkpoint, written by experiments.import_official from {source}\n"
    return header + yaml.safe_dump(config, sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a model zoo .tar.gz, a directory with model.ckpt.index, or a prefix")
    parser.add_argument("--output", type=Path, required=True, help="the .ckpt to write")
    add_flag(parser, "--train_output_stride", "--output_stride", type=int, default=16, choices=(8, 16, 32),
             help="the output stride the official model was trained with (16 for the zoo)")
    parser.add_argument("--atrous_rates", type=_ints, default=list(DEFAULT_ATROUS_RATES),
                        help="the official --atrous_rates at output stride 16 (6,12,18 for the zoo)")
    parser.add_argument("--multi_grid", type=_ints, default=None,
                        help="the official --multi_grid of a ResNet model, e.g. 1,2,4 (none for the zoo)")
    args = parser.parse_args(argv)
    try:
        imported = import_official(args.source, args.output, output_stride=args.train_output_stride,
                                   atrous_rates=args.atrous_rates, multi_grid=args.multi_grid or None)
    except (ValueError, ImportError) as e:  # OfficialCheckpointError, or a flag the network cannot take
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    lines = [f"wrote {args.output}", *imported.summary]
    if "net_config" in imported.checkpoint:
        config = args.output.with_suffix(".yaml")
        config.write_text(network_config_yaml(imported.checkpoint, str(args.source)))
        lines.append(f"wrote {config}: pass it as --config to experiments.train validate/fit with --ckpt_path {args.output}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
