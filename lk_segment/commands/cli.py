"""The ``lk-segment`` command: train, predict, evaluate, config, variants, erf, compare, study, report, bench, ui.

A mistake the user can fix (a bad key, a missing folder, an unknown run id) prints one line
that names it and exits with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lk_segment import names
from lk_segment.errors import UserError

COMPARE_EXPERIMENT = "compare"  # make compare's and make report's experiment when none is named


def _train(args) -> None:
    from lk_segment.config import load_config
    from lk_segment.data.carvana import check_root

    cfg = load_config(args.variant, args.overrides)  # a bad variant, key or data root is said in a second,
    if cfg.data.root:                                 # before the training stack is imported (seconds)
        check_root(cfg.data.root)
    from lk_segment.commands.train import train

    result = train(cfg)
    if result["global_rank"] == 0:  # under DDP every process returns here; one line is enough
        full = result["metrics"].get(names.DICE_FULL_BEST)
        print(f"run {result['run_id']}: best val/dice {result['best_dice']:.4f}"
              + (f", its val/dice_full {full:.4f} (mean per-image Dice at full resolution)" if full is not None else "")
              + f"; checkpoint {result['best_checkpoint']}")


def _predict(args) -> None:
    from lk_segment.tracking import find_checkpoint

    if sum(map(bool, (args.run, args.ckpt, args.model))) != 1:
        raise UserError("give exactly one of --run <mlflow run id>, --ckpt <path to a .ckpt> or --model "
                        "<models:/name@alias>")
    if args.ckpt and not Path(args.ckpt).is_file():  # said before torch is imported
        raise UserError(f"checkpoint {args.ckpt!r} does not exist: check the path or the run id")
    if args.model:
        from lk_segment.model_registry import weights_of

        ckpt = weights_of(args.model)
    else:
        ckpt = args.ckpt or find_checkpoint(args.run)
    from lk_segment.commands.predict import predict_folder

    csv_path = predict_folder(ckpt, args.input, args.out, device=args.device, tta=args.tta,
                              batch_size=args.batch_size)
    print(f"masks and {csv_path} written")


def _evaluate(args) -> None:
    from lk_segment.commands.evaluate import evaluate, format_table
    from lk_segment.tracking import find_checkpoint

    if bool(args.run) == bool(args.ckpt):
        raise UserError("give exactly one of --run <mlflow run id> or --ckpt <path to a .ckpt>")
    ckpt = args.ckpt or find_checkpoint(args.run)
    result = evaluate(ckpt, args.data, args.out, run_id=args.run, device=args.device, tta=args.tta,
                      batch_size=args.batch_size)
    print(format_table(result, f"run {args.run}" if args.run else str(ckpt), args.data, args.tta))
    print(f"  logged to run {args.run} under {result['prefix']}" if args.run else
          "  not logged to MLflow (give --run <id> instead of --ckpt to log it to the run)")


def _register(args) -> None:
    from lk_segment.model_registry import register

    version = register(args.run, args.name, args.alias or None)
    alias = f", alias {args.alias!r}" if args.alias else ""
    print(f"run {args.run}'s model registered as {args.name!r} version {version}{alias}: "
          f"make predict MODEL=models:/{args.name}{'@' + args.alias if args.alias else '/' + version} INPUT=...")


SERVER_WORKERS = 4  # mlflow server's own default: several machines log at once; one user's UI needs one


def _ui(args) -> None:
    """Print the page to open, then become ``mlflow server`` over the project's store (see ``server.py``)."""
    from lk_segment.commands.server import allowed_hosts, auth_environment, check_exposure
    from lk_segment.tracking import experiment_urls, has_runs, redact, tracking_uri

    check_exposure(args.host, args.auth, args.insecure)
    uri = tracking_uri()
    if not uri.startswith("sqlite:"):
        raise UserError(f"make ui/server serve the project's SQLite store; MLFLOW_TRACKING_URI is {redact(uri)!r}: "
                        "unset it, or open that store's own UI")
    hosts = allowed_hosts(args.host, args.port, args.allowed_hosts, args.insecure)
    if args.auth:
        os.environ.update(auth_environment())  # the server inherits it
    os.makedirs("mlruns/artifacts", exist_ok=True)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    base = f"http://{shown}:{args.port}"
    urls = experiment_urls(base)
    first = args.experiment if args.experiment in urls else next(iter(urls), None)
    if first is None or not has_runs(first):
        print(f"lk-segment: open {base}", flush=True)
        print("  the store holds no training run yet: `make train` logs one (MLFLOW_TRACKING_URI: "
              f"{redact(uri)})", flush=True)
    else:
        print(f"lk-segment: open {urls[first]}", flush=True)
        print(f"  the training runs of experiment {first!r} with their Dice, best val/dice_full_best first "
              "(a shared view: 'Override saved view' keeps its columns); the Chart view plots every metric", flush=True)
    for name, url in urls.items():
        if name != first:
            print(f"  experiment {name!r}: {url}", flush=True)
    if args.auth:
        print("  sign in as a user of mlruns/basic_auth.db (admin: created on the first start); clients set "
              "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD", flush=True)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port), "--allowed-hosts", hosts,
           "--workers", str(args.workers or (SERVER_WORKERS if args.server else 1))]
    if args.auth:
        cmd += ["--app-name", "basic-auth"]
    if args.server:  # artifacts go through the server: other machines need no access to this disk
        cmd += ["--artifacts-destination", "./mlruns/artifacts"]
    else:
        cmd += ["--default-artifact-root", "./mlruns/artifacts"]
    # MLflow 3's server also starts a job runner and seven job consumers (eight interpreters, each importing
    # MLflow: some 25 s of CPU) for GenAI jobs (judges, trace roll-ups) that nothing here submits. Set it to
    # true to have them.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execv(sys.executable, cmd)


def _config(args) -> None:
    from omegaconf import OmegaConf

    from lk_segment.config import load_config

    print(OmegaConf.to_yaml(load_config(args.variant, args.overrides), resolve=True), end="")


def _variants(args) -> None:
    from lk_segment.analysis.variants import format_table, replace_readme_table, variants_table

    rows = variants_table(args.width, args.height, args.depth)
    table = format_table(rows, markdown=args.markdown or bool(args.readme))
    if args.readme:
        readme = Path(args.readme)
        if not readme.is_file():
            raise UserError(f"README {args.readme!r} does not exist")
        try:
            readme.write_text(replace_readme_table(readme.read_text(), table))
        except ValueError as exc:
            raise UserError(f"{args.readme}: {exc}") from exc
        print(f"variants table written into {args.readme}")
    else:
        print(table)


def _erf(args) -> None:
    from lk_segment.analysis.erf import erf_metric_name, erf_of_run, erf_of_variant

    if bool(args.run) == bool(args.variant):
        raise UserError("give exactly one of --run <mlflow run id> or --variant <name> (a freshly initialised model)")
    if args.run and args.overrides:
        raise UserError("key=value overrides go with --variant only: a run's ERF uses the run's own config")
    if args.images < 1:
        raise UserError(f"--images must be at least 1, got {args.images}")
    if args.run:
        result = erf_of_run(args.run, args.images, args.out)
        what = f"run {args.run}"
    else:
        result = erf_of_variant(args.variant, args.overrides, args.images, args.out)
        what = f"variant {args.variant} (freshly initialised)"
    h, w = result["size"]
    print(f"effective receptive field of {what}, {result['images']} validation images at {h}x{w}:")
    for fraction, side in result["sides"].items():
        print(f"  {erf_metric_name(fraction)} = {side}  (smallest centred square holding {fraction:.0%})")
    print(f"  theoretical receptive field: {result['receptive_field_px']} px; heat-map: {result['png']}"
          + (" (also logged to the run)" if args.run else ""))


def _compare(args) -> None:
    from lk_segment.comparison.sweep import compare

    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}")
    variants = [v for item in args.variants for v in item.split()]
    result = compare(variants, args.seeds, args.overrides, experiment=args.experiment, report_dir=args.out)
    print(f"comparison {result['parent_run_id']}: {len(result['trained'])} trained, {len(result['skipped'])} "
          f"skipped (already finished); report {result['report']['markdown']}")


def _study(args) -> None:
    from lk_segment.comparison.study import run_study

    report = run_study(args.study, args.overrides, out_dir=args.out, markdown=args.markdown,
                       report_only=args.report_only)
    print(f"study {args.study}: report {report['markdown']} (also logged to parent run {report['parent_run_id']})")
    print(report["answer"])


def _report(args) -> None:
    from lk_segment.comparison.report import write_report

    out = args.out or os.path.join(names.REPORTS_DIR, args.experiment)
    result = write_report(args.experiment, out, parent_run_id=args.run, markdown_path=args.markdown)
    print(f"report of comparison {result['parent_run_id']}: {result['markdown']}, {result['csv']}, "
          f"{len(result['plots'])} plots (also logged to that run)")
    print(result["conclusions"])


def _bench(args) -> None:
    from lk_segment.bench import bench_config_from, run_bench, table, write_results

    options = {k: getattr(args, k) for k in ("variants", "height", "width", "batch_size", "steps", "warmup",
                                             "pair_turns", "settings", "loader_images", "matmul_size", "copy_mb",
                                             "dw_kernels", "device")}
    for key in ("height", "width", "batch_size", "steps", "pair_turns", "loader_images", "matmul_size", "copy_mb"):
        if options[key] is not None and options[key] < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1, got {options[key]}")
    if args.device is not None:
        from lk_segment.device import resolve_device

        resolve_device(args.device)  # cuda without a GPU stops here, before any measurement
    if any(k < 1 or k % 2 == 0 for k in args.dw_kernels or []):
        raise UserError(f"--dw-kernels must be odd and positive (size-keeping kernels), got {args.dw_kernels}")
    options.update(overrides=args.overrides, tf32=args.tf32, dw_shapes=args.dw_shapes and [
        _shape(text) for text in args.dw_shapes])
    if args.variants:
        from lk_segment.config import available_variants

        unknown = sorted(set(args.variants) - set(available_variants()))
        if unknown:
            raise UserError(f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(available_variants())}")
    results = run_bench(bench_config_from(options))
    run_id = write_results(results, args.out)
    print(table(results))
    print(f"\n{args.out} written; MLflow run {run_id} in experiment 'bench'")


def _shape(text: str) -> list[int]:
    """'8x16x1024x1024' -> [8, 16, 1024, 1024] (B, C, H, W)."""
    parts = text.lower().split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UserError(f"--dw-shapes takes B x C x H x W shapes such as 8x16x1024x1024, got {text!r}")
    return [int(p) for p in parts]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lk-segment", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one variant, log it to MLflow")
    p.add_argument("--variant", "-v", default="3x3", help="a file of configs/variant/ (default %(default)s)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. trainer.max_epochs=3")
    p.set_defaults(func=_train)

    p = sub.add_parser("predict", help="masks and submission.csv from a trained run or checkpoint")
    p.add_argument("--run", help="MLflow run id (its best checkpoint is used)")
    p.add_argument("--ckpt", help="path to a .ckpt file")
    p.add_argument("--model", help="a logged or registered MLflow model: models:/<name>@<alias>, "
                   "models:/<name>/<version> or runs:/<run id>/model")
    p.add_argument("--input", required=True, help="folder of .jpg images")
    p.add_argument("--out", required=True, help="folder for <name>_mask.png and submission.csv")
    p.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu or cuda")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation: mean of the logits of the "
                   "image and of its mirror image")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default %(default)s)")
    p.set_defaults(func=_predict)

    p = sub.add_parser("evaluate", help="mean per-image Dice at full resolution on a labelled folder")
    p.add_argument("--run", help="MLflow run id (its best checkpoint; the figures are logged to it)")
    p.add_argument("--ckpt", help="path to a .ckpt file")
    p.add_argument("--data", required=True, help="Kaggle-layout folder: train/*.jpg and train_masks/*_mask.gif")
    p.add_argument("--out", default="evaluations", help="folder for <data name>/per_image.csv and the worst "
                   "overlays (default evaluations)")
    p.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu or cuda")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation, as predict --tta")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default %(default)s)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("register", help="register a run's MLflow model in the model registry, with an alias")
    p.add_argument("--run", required=True, help="MLflow run id")
    p.add_argument("--name", default=names.REGISTERED_MODEL, help="registered model name (default %(default)s)")
    p.add_argument("--alias", default=names.CHAMPION, help="alias set on the new version (default %(default)s; '' for "
                   "none)")
    p.set_defaults(func=_register)

    p = sub.add_parser("ui", help="MLflow UI (or, with --server, a tracking server) over the project's store")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--experiment", help="experiment whose page is printed first (default: the one whose latest "
                   "run started last)")
    p.add_argument("--server", action="store_true", help="a tracking server for several machines: artifacts are "
                   "uploaded through it (--artifacts-destination)")
    p.add_argument("--allowed-hosts", help="Host headers to answer, comma-separated (default: this machine's names "
                   "and addresses; '*' only with --insecure)")
    p.add_argument("--auth", action="store_true", help="MLflow's basic-auth app: users and passwords (the admin's "
                   "from MLFLOW_AUTH_ADMIN_PASSWORD on the first start); needed beyond loopback")
    p.add_argument("--insecure", action="store_true", help="listen beyond loopback without --auth (a trusted network)")
    p.add_argument("--workers", type=int, help="server processes answering requests (default: 1 for the UI of one "
                   f"user, {SERVER_WORKERS} with --server, MLflow's own default)")
    p.set_defaults(func=_ui)

    p = sub.add_parser("config", help="print the resolved config")
    p.add_argument("--variant", "-v", default=None)
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_config)

    p = sub.add_parser("variants", help="the kernel variants: params, GFLOPs, theoretical receptive field")
    p.add_argument("--width", type=int, help="model.width, channels at the first level (default: the config's)")
    p.add_argument("--height", type=int, help="input height in px, width by Carvana's aspect (default: data.height)")
    p.add_argument("--depth", type=int, help="model.depth, the number of poolings (default: the config's)")
    p.add_argument("--markdown", action="store_true", help="print the README's markdown table")
    p.add_argument("--readme", help="write the markdown table into this file between its variants markers")
    p.set_defaults(func=_variants)

    p = sub.add_parser("bench", help="speed and memory against a plain-PyTorch baseline (docs/performance.md)",
                       description="An option not given takes BenchConfig's default (lk_segment/bench/config.py, "
                                   "each with its reason).")
    p.add_argument("--out", default="bench.json", help="JSON file for the results (default %(default)s)")
    p.add_argument("--variants", nargs="+", help="default: every variant")
    p.add_argument("--height", type=int, help="step and inference size (width from the Carvana aspect)")
    p.add_argument("--width", type=int, help="default: from the Carvana aspect (e.g. --height 1024 --width 1024)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--steps", type=int, help="timed steps per figure (median)")
    p.add_argument("--warmup", type=int)
    p.add_argument("--pair-turns", type=int, help="turns of the 1x5/5x5 and 3x3/5x5 step-time ratios")
    p.add_argument("--settings", nargs="+", help="settings swept on 3x3, e.g. 32 bf16+cl bf16+cl+compile")
    p.add_argument("--loader-images", type=int, help="images decoded for the loader figures")
    p.add_argument("--matmul-size", type=int, help="n of the n^3 matmul peak")
    p.add_argument("--copy-mb", type=int, help="MiB of the copy-bandwidth tensor")
    p.add_argument("--dw-kernels", type=int, nargs="+", help="depthwise K of the native/FFT rows")
    p.add_argument("--dw-shapes", nargs="+", help="BxCxHxW of the depthwise rows")
    p.add_argument("--tf32", action="store_true", help="TF32 in the float32 rows (without it: true float32)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every variant, e.g. model.width=8")
    p.set_defaults(func=_bench)

    p = sub.add_parser("erf", help="effective receptive field of a trained run (logged to it) or a fresh model")
    p.add_argument("--run", help="MLflow run id: its best checkpoint, its own validation images")
    p.add_argument("--variant", "-v", help="a file of configs/variant/: a freshly initialised model")
    p.add_argument("--images", type=int, default=names.ERF_IMAGES,
                   help="validation images averaged over (default %(default)s)")
    p.add_argument("--out", default="erf", help="folder for <run id or variant>/erf.png (default %(default)s)")
    p.add_argument("overrides", nargs="*", help="with --variant: key=value config overrides, e.g. data.root=...")
    p.set_defaults(func=_erf)

    p = sub.add_parser("compare", help="train every variant x seed under one MLflow parent run, then report")
    p.add_argument("--variants", nargs="+", default=["3x3", "5x5", "1x5"], help="variant names (default: 3x3 5x5 1x5)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per variant (default %(default)s)")
    p.add_argument("--experiment", default=COMPARE_EXPERIMENT, help="MLflow experiment (default %(default)s)")
    p.add_argument("--out", help="folder for the report (default reports/<experiment>)")
    p.add_argument("overrides", nargs="*", help="key=value overrides shared by every run, e.g. trainer.max_epochs=3")
    p.set_defaults(func=_compare)

    p = sub.add_parser("study", help="a study of configs/study/: every variant x fold by car, the report with "
                       "intervals and costs (resumes where it stopped)")
    p.add_argument("study", help="a name of configs/study/ (e.g. cpu-sample) or a .yaml file")
    p.add_argument("--out", help="folder for the CSVs and plots (default reports/study-<name>)")
    p.add_argument("--markdown", help="path of the Markdown report (default <out>/results.md)")
    p.add_argument("--report-only", action="store_true", help="train nothing: the report of the latest study run")
    p.add_argument("overrides", nargs="*", help="key=value overrides after the study's own (a new study run)")
    p.set_defaults(func=_study)

    p = sub.add_parser("report", help="results table, plots and conclusions of a comparison, from MLflow alone")
    p.add_argument("experiment", nargs="?", default=COMPARE_EXPERIMENT,
                   help="the MLflow experiment of the comparison (default %(default)s)")
    p.add_argument("--run", help="the comparison's parent run id (default: the latest in the experiment)")
    p.add_argument("--out", help="folder for results.csv and the plots (default reports/<experiment>)")
    p.add_argument("--markdown", help="path of the Markdown report (default <out>/results.md)")
    p.set_defaults(func=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    from lk_segment import malloc

    malloc.tune_malloc()  # before the first tensor: freed activations are reused, not unmapped (malloc.py)
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
