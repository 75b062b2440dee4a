"""Parameters and Multiply-Adds of a configuration at 513×513, evaluation protocol included, counted two ways.

    python -m experiments.complexity --config experiments/configs/resnet101_os16.yaml [--json]
    python -m experiments.complexity --paper_tables [--json]   # every row of Tables 3 and 5 vs the paper

`_tf` (TF-graph count): as tfprof counts the official TF graph, every atrous conv on its space-to-batch
padding — the paper's convention, the one to compare with its tables. No suffix (plain count): what this
PyTorch code executes. Counted on the meta device (seconds, no memory, no weights download); see
`lightning_modules/components/complexity.py`.
"""
from __future__ import annotations

import argparse
import json
import sys

from experiments.cli.overrides import to_cli_args
from experiments.cli.parse_only import config_reader, eval_protocol, net_kwargs
from experiments.paper import TABLE3, TABLE5, Table
from lightning_modules.components.complexity import (MULTIPLY_ADDS, MULTIPLY_ADDS_TF, PARAMETERS, network_parameters,
                                                     protocol_cost, protocol_multiply_adds)
from experiments.cli.flags import add_flag


def config_cost(config) -> dict:
    """`config`: as `experiments.train fit` parses it (`experiments.cli.parse_only`).
    Backbone, evaluation protocol, parameters (millions) and both Multiply-Adds counts (billions)."""
    net, protocol = net_kwargs(config), eval_protocol(config)
    cost = protocol_cost(net, protocol)
    return {"backbone": net["backbone"], **protocol.as_dict(),
            "parameters_millions": cost[PARAMETERS], "multiply_adds_billions": cost[MULTIPLY_ADDS],
            "multiply_adds_tf_billions": cost[MULTIPLY_ADDS_TF]}


def table_rows(table: Table, explain_layout: bool = False) -> list[dict]:
    """Each row of a paper table: the paper's Multiply-Adds beside ours (TF-graph and plain counts).

    `explain_layout` (ResNet tables): also count the official ResNet beta layout the TF way and say which
    share of the residual (paper − ours, TF count) that layout accounts for.
    """
    rows = []
    for index, row in enumerate(table.rows, start=1):
        config = config_reader().parse([table.config], to_cli_args({**row.train, **row.eval}))
        cost, paper = config_cost(config), row.paper_multiply_adds
        entry = {"table": table.name.split("_")[0], "index": index, "row": row.name, "paper_mIoU": row.paper_miou,
                 "paper_multiply_adds_billions": paper,
                 "ours_multiply_adds_tf_billions": round(cost["multiply_adds_tf_billions"], 2),
                 "relative_difference_tf": round(cost["multiply_adds_tf_billions"] / paper - 1, 4),
                 "ours_multiply_adds_billions": round(cost["multiply_adds_billions"], 2),
                 "relative_difference": round(cost["multiply_adds_billions"] / paper - 1, 4),
                 "parameters_millions": round(cost["parameters_millions"], 2)}
        if explain_layout:
            net, protocol = net_kwargs(config), eval_protocol(config)
            beta = protocol_multiply_adds(net, protocol, layout="resnet_beta").tf / 1e9
            entry["resnet_beta_parameters_millions"] = round(network_parameters(net, "resnet_beta") / 1e6, 2)
            entry["resnet_beta_multiply_adds_tf_billions"] = round(beta, 2)
            entry["relative_difference_resnet_beta_tf"] = round(beta / paper - 1, 4)
            entry["layout_share_of_residual"] = round((beta - cost["multiply_adds_tf_billions"])
                                                      / (paper - cost["multiply_adds_tf_billions"]), 3)
        rows.append(entry)
    return rows


def paper_table_rows() -> list[dict]:
    return table_rows(TABLE3, explain_layout=True) + table_rows(TABLE5)


def multi_scale_factor(rows: list[dict], key: str) -> float:
    """Table 3, eval OS8 without decoder: multi-scale ÷ single-scale (paper: 2435.37 / 276.18 = 8.818)."""
    by_name = {r["row"]: r for r in rows if r["table"] == "table3"}
    return by_name["train16-eval8-ms"][key] / by_name["train16-eval8"][key]


def print_paper_tables(rows: list[dict]) -> None:
    print("Multiply-Adds, billions, 513×513, whole evaluation protocol. paper: tfprof on the official TF graph; "
          "TF: ours counted the same way\n(atrous convs on their space-to-batch padding); plain: what this PyTorch "
          "code executes. Table 3 also counts the official ResNet-101 beta layout\n(3×3 stem, stride in the last "
          "unit; a counting aid) the TF way: 'layout' is the share of the TF residual it accounts for.\n")
    print(f"{'table':<6} {'#':>2} {'row':<38} {'paper':>9} {'TF':>9} {'Δ':>6} {'plain':>9} {'Δ':>6} {'params':>7}"
          f" │ {'beta TF':>9} {'Δ':>6} {'layout':>6} {'params':>7}")
    for r in rows:
        line = (f"{r['table']:<6} {r['index']:>2} {r['row']:<38} {r['paper_multiply_adds_billions']:>9.2f} "
                f"{r['ours_multiply_adds_tf_billions']:>9.2f} {100 * r['relative_difference_tf']:>+5.1f}% "
                f"{r['ours_multiply_adds_billions']:>9.2f} {100 * r['relative_difference']:>+5.1f}% "
                f"{r['parameters_millions']:>6.2f}M")
        if "layout_share_of_residual" in r:
            line += (f" │ {r['resnet_beta_multiply_adds_tf_billions']:>9.2f} "
                     f"{100 * r['relative_difference_resnet_beta_tf']:>+5.1f}% "
                     f"{100 * r['layout_share_of_residual']:>5.0f}% {r['resnet_beta_parameters_millions']:>6.2f}M")
        print(line)
    paper = 2435.37 / 276.18
    tf, plain = (multi_scale_factor(rows, f"ours_multiply_adds{k}_billions") for k in ("_tf", ""))
    print(f"\nMulti-scale factor (Table 3, eval OS8, MS ÷ single scale): paper {paper:.3f}, "
          f"TF {tf:.3f} ({100 * (tf / paper - 1):+.1f}%), plain {plain:.3f} ({100 * (plain / paper - 1):+.1f}%).")
    t3 = {r["row"]: r for r in rows if r["table"] == "table3"}

    def decoder_cost(eval_os: int, key: str) -> float:
        return t3[f"train16-eval{eval_os}-dec"][key] - t3[f"train16-eval{eval_os}"][key]

    print(f"Table 3 eval OS16 + decoder (rows 5, 13): the paper's decoder increment at eval OS16 is "
          f"{decoder_cost(16, 'paper_multiply_adds_billions'):.2f}B, at OS8 "
          f"{decoder_cost(8, 'paper_multiply_adds_billions'):.2f}B; the decoder costs "
          f"{decoder_cost(16, 'ours_multiply_adds_tf_billions'):.2f}B here (TF count), so the beta layout "
          f"overshoots those two rows. The beta layout's 58.16M parameters (no decoder) are the MobileNetV2 paper's "
          f"figure for this DeepLabv3 ResNet-101 (its Table 7).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", action="append", help="YAML config(s) over base.yaml, as for experiments.train")
    add_flag(what, "--paper_tables", "--paper-tables", action="store_true",
             help="every row of the paper's Tables 3 and 5")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    if args.config:
        result = config_cost(config_reader().parse(args.config))
        if args.json:
            print(json.dumps(result, indent=1))
        else:
            for key, value in result.items():
                print(f"{key:>26}: {value:.2f}" if isinstance(value, float) else f"{key:>26}: {value}")
        return 0
    rows = paper_table_rows()
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print_paper_tables(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
