"""The ``lk-segment`` command: train, predict, config, variants.

A mistake the user can fix (a bad key, a missing folder, an unknown run id) prints one line
that names it and exits with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from lk_segment.errors import UserError  # noqa: E402


def _train(args) -> None:
    from lk_segment.config import load_config
    from lk_segment.train import train

    result = train(load_config(args.variant, args.overrides))
    print(f"run {result['run_id']}: best val/dice {result['best_dice']:.4f}; checkpoint {result['best_checkpoint']}")


def _predict(args) -> None:
    from lk_segment.predict import predict_folder
    from lk_segment.tracking import find_checkpoint

    if bool(args.run) == bool(args.ckpt):
        raise UserError("give exactly one of --run <mlflow run id> or --ckpt <path to a .ckpt>")
    ckpt = args.ckpt or find_checkpoint(args.run)
    csv_path = predict_folder(ckpt, args.input, args.out)
    print(f"masks and {csv_path} written")


def _config(args) -> None:
    from omegaconf import OmegaConf

    from lk_segment.config import load_config

    print(OmegaConf.to_yaml(load_config(args.variant, args.overrides), resolve=True), end="")


def _variants(args) -> None:
    from lk_segment.config import available_variants

    print("\n".join(available_variants()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lk-segment", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one variant, log it to MLflow")
    p.add_argument("--variant", "-v", default="3x3", help="a file of configs/variant/ (default 3x3)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. trainer.max_epochs=3")
    p.set_defaults(func=_train)

    p = sub.add_parser("predict", help="masks and submission.csv from a trained run or checkpoint")
    p.add_argument("--run", help="MLflow run id (its best checkpoint is used)")
    p.add_argument("--ckpt", help="path to a .ckpt file")
    p.add_argument("--input", required=True, help="folder of .jpg images")
    p.add_argument("--out", required=True, help="folder for <name>_mask.png and submission.csv")
    p.set_defaults(func=_predict)

    p = sub.add_parser("config", help="print the resolved config")
    p.add_argument("--variant", "-v", default=None)
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_config)

    p = sub.add_parser("variants", help="list the kernel variants")
    p.set_defaults(func=_variants)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"lk-segment: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lk-segment: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
