"""The ``apem`` command (also ``python -m apem``)."""

from __future__ import annotations

import argparse
import sys
import time


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="image folder (default: $APEM_DATA, else ../shared/data/imagenet-samples)")
    p.add_argument("--ground-truth", help="ground-truth file for a flat ImageNet validation folder")
    p.add_argument("--model", default="efficientnet_lite0", help="efficientnet_lite0 (default) or vgg16")
    p.add_argument("--preset", default="standard", choices=["standard", "thesis"], help="preprocessing preset")
    p.add_argument("--weights", default="default", help="'default' (offline file), a state-dict path, or 'none'")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=int, default=32)


def cmd_classify(args) -> int:
    import torch
    from tqdm import tqdm

    from apem.data import iter_batches, load_image_set
    from apem.models import load_model
    from apem.numerics import no_tf32

    from apem.config import ConfigError, check_device

    if args.batch_size < 1 or args.limit < 0:
        raise ConfigError("--batch-size must be >= 1 and --limit >= 0")
    check_device(args.device)
    images = load_image_set(args.data, args.ground_truth)
    if args.limit:
        images = images.subset(range(min(args.limit, len(images))))
    lm = load_model(args.model, args.preset, None if args.weights == "none" else args.weights, args.device)
    correct = seen = 0
    t0 = time.perf_counter()
    # TF32 off, as the runner classifies its pool: the same answers as `apem run` on the same device
    with no_tf32(), torch.inference_mode(), tqdm(total=len(images), desc=f"classify {lm.name}", unit="img") as bar:
        for idx, x, y in iter_batches(images, lm.transform, args.batch_size):
            pred = lm.model(x.to(lm.device)).argmax(1).cpu()
            correct += int((pred == y).sum())
            seen += len(idx)
            bar.update(len(idx))
            bar.set_postfix(top1=f"{correct / seen:.3f}")
    dt = time.perf_counter() - t0
    print(f"model={lm.name} preset={lm.preset} weights={lm.weights}")
    print(f"images={seen} ({images.layout} layout, {images.root}) skipped={len(images) - seen}")
    print(f"top-1 accuracy: {correct / max(seen, 1):.4f} ({correct}/{seen}) in {dt:.1f} s on {lm.device}")
    return 0


def cmd_download_samples(args) -> int:
    from apem.data import download_samples

    download_samples(args.dest)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from apem import __version__

    parser = argparse.ArgumentParser(prog="apem", description="Adversarial Perturbation Explanation Metric")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("classify", help="classify an image set and print top-1 accuracy")
    _add_model_args(p)
    p.add_argument("--limit", type=int, default=0, help="only the first N images")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("download-samples", help="fetch the 1,000-image ImageNet sample set (needs internet)")
    p.add_argument("dest", help="folder to put the images in")
    p.set_defaults(func=cmd_download_samples)

    p = sub.add_parser("run", help="compute (or resume) a configuration's results and print the summary table")
    p.add_argument("config", help="a YAML file or the name of a parameter set in params/")
    add_run_args(p)
    p.add_argument("--no-progress", action="store_true",
                   help="no time estimate and no progress bar (both go to stderr)")
    p.add_argument("--estimate-only", "--dry-run", action="store_true", dest="estimate_only",
                   help="print how long the run would take on this machine (what is still missing), compute nothing")
    p.add_argument("--json", action="store_true",
                   help="with --estimate-only: one JSON object on stdout (images_selected, images_to_compute, "
                        "maps_to_compute, searches_to_compute, ..., seconds, cells_bytes), nothing else")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("score", help="APEM of a model and explanation method(s) on a folder of images: print the "
                                     "table, write it as parquet (results are stored: a re-run computes nothing)")
    p.add_argument("--model", default="efficientnet_lite0",
                   help="efficientnet_lite0 (default), vgg16, timm:NAME or torchvision:NAME")
    p.add_argument("--weights", default="default",
                   help="'default' (the offline file or the local cache; never downloaded), a state-dict path, or "
                        "'none' (random weights, explicitly)")
    p.add_argument("--preset", default="standard", choices=["standard", "thesis"], help="preprocessing preset")
    p.add_argument("--method", action="append", required=True, metavar="NAME",
                   help="an explanation method: gradient, smoothgrad, lrp_epsilon, ..., captum:ClassName, "
                        "zennit:composite or module:function (repeat for several; parameters with "
                        "-p methods '{NAME: {KEY: VALUE}}')")
    p.add_argument("--data", default=None, help="image folder (default: $APEM_DATA); labelled as apem.data reads it")
    p.add_argument("--ground-truth", default=None, help="ground-truth file for a flat folder")
    p.add_argument("-n", type=int, default=20, help="correctly classified images to score (default 20)")
    p.add_argument("--misclassified", type=int, default=0, metavar="M",
                   help="misclassified images to score too, a group of their own (default 0)")
    p.add_argument("--stage", type=int, default=3, choices=[1, 2, 3],
                   help="the thesis's visualisation stage that makes the maps (default 3, its final map)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="the per-image table as parquet (default: apem-scores-<configuration digest>.parquet)")
    add_run_args(p)
    p.add_argument("--no-progress", action="store_true", help="no time estimate and no progress bar")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("table", help="print the summary table of a configuration (computing it if needed)")
    p.add_argument("config")
    add_run_args(p)
    p.set_defaults(func=cmd_table, no_progress=False)

    p = sub.add_parser("store", help="what the results store holds and weighs; `store gc` removes cells no "
                                     "configuration reads")
    p.add_argument("action", nargs="?", choices=["gc"], help="gc: remove the cells no configuration folder reads")
    p.add_argument("--dry-run", action="store_true", help="with gc: list what would be removed, remove nothing")
    p.add_argument("--results", default=None, metavar="DIR", help="results store root (default: $APEM_RESULTS or results/)")
    p.set_defaults(func=cmd_store)

    from apem.book import register as register_book

    register_book(sub)
    return parser


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The options every command that runs a configuration takes."""
    p.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="override a configuration field (VALUE is read as YAML; null sets an optional field to null)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the store's recorded count, else $APEM_THREADS, else 2); "
                        "part of the numeric environment every result records")
    p.add_argument("--results", default=None, metavar="DIR", help="results store root (default: $APEM_RESULTS or results/)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="compute the chunks on a Ray cluster: alone, a local Ray with this machine's cores; 'auto' "
                        "or HOST:PORT (ray://HOST:PORT) joins a running cluster. Same store, same numbers "
                        "(the book's page 'Running at scale')")


def _config(args):
    from apem.config import load_config, parse_overrides

    return load_config(args.config, **parse_overrides(args.param))


def _print_summary(cfg, res) -> None:
    """The summary of ``apem run`` and ``apem table``: the book's censoring-aware table (Table 4.2's view).

    Per group of images, :func:`apem.stats.summary_table` per method and stage, shown by
    :func:`apem.book.display.summary_view`: a mean that censored searches bound is marked ≥ / ≤ (or
    named the restricted mean when censored both ways), the median as the range censoring allows, and the
    censored counts; the rows whose APEM is undefined are left out, as :func:`apem.metric.apem` does.
    """
    import pandas as pd

    from apem import stats
    from apem.book import display

    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(f"configuration {cfg.name} ({cfg.digest()}): {res.store.dir}")
        for group, t in res.table.groupby("group", sort=False):
            print(f"\nAPEM per method and stage, {group} images ({t.image_id.nunique()} images):")
            S = stats.summary_table(t, by=("method", "stage"), seed=getattr(cfg, "seed", 0))
            print(display.summary_view(S).to_string())
            print(display.censoring_note(t[t.apem.notna()]))
            if int(t.apem.isna().sum()):
                print("(means and medians leave out the undefined rows: a map with no direction has no epsilon)")


def cmd_run(args) -> int:
    from apem.run import Results, run

    cfg = _config(args)
    if args.json and not args.estimate_only:
        raise SystemExit("apem: --json goes with --estimate-only")
    if args.estimate_only:
        from apem.runner.remaining import estimate_only

        est = estimate_only(cfg, root=args.results, threads=args.threads)
        if args.json:
            import json

            print(json.dumps(est.as_json()))
        else:
            print(est.report())
        return 0
    t0 = time.perf_counter()
    store = run(cfg, progress=not args.no_progress, root=args.results, threads=args.threads, ray=args.ray)
    _print_summary(cfg, Results(cfg, store))
    done = f"computed {len(store.computed)} chunk(s) in this run"
    if store.plan is not None:
        p = store.plan.summary()
        done += (f" ({p['images_to_compute']} of {p['images_selected']} images; maps {p['maps_to_compute']} computed, "
                 f"{p['maps_reused']} reused; searches {p['searches_to_compute']} computed, {p['searches_reused']} reused; "
                 f"shuffled searches {p['shuffled_searches_to_compute']} computed, "
                 f"{p['shuffled_searches_reused']} reused)")
    print(f"\n{done}; wall time {time.perf_counter() - t0:.1f} s")
    return 0


def score_config(args):
    """The configuration ``apem score`` runs: the runner's, with the command's model, methods and images."""
    from apem.config import Config, parse_overrides

    fields = dict(name="score", model=args.model, weights=args.weights, preset=args.preset, data=args.data,
                  ground_truth=args.ground_truth, n_correct=args.n, n_misclassified=args.misclassified, stages=[args.stage],
                  methods={m: {} for m in args.method}, shuffles=0, filter_images=0)
    fields.update(parse_overrides(args.param))
    return Config.from_dict(fields, "apem score")


def cmd_score(args) -> int:
    """``apem score``: the runner on a configuration built from the options, its table printed and written."""
    from apem.run import Results, run

    cfg = score_config(args)
    t0 = time.perf_counter()
    store = run(cfg, progress=not args.no_progress, root=args.results, threads=args.threads, ray=args.ray)
    res = Results(cfg, store)
    _print_summary(cfg, res)
    out = args.out or f"apem-scores-{cfg.digest()}.parquet"
    res.table.to_parquet(out, index=False)
    print(f"\n{len(res.table)} rows (image x method) written to {out}; computed {len(store.computed)} chunk(s) in "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


def cmd_store(args) -> int:
    from apem.runner import housekeeping
    from apem.runner.cells import human_size
    from apem.store import RESULTS_DIR

    root = args.results or RESULTS_DIR
    if args.action != "gc":
        print(housekeeping.report(root))
        return 0
    gone, size = housekeeping.collect(root, dry_run=args.dry_run)
    for b in gone:
        print(b)
    print(f"{'would remove' if args.dry_run else 'removed'} {len(gone)} batch(es) of cells, {human_size(size)}",
          file=sys.stderr)
    return 0


def cmd_table(args) -> int:
    from apem.run import results

    cfg = _config(args)
    _print_summary(cfg, results(cfg, root=args.results, threads=args.threads, ray=args.ray))
    return 0


def user_errors() -> tuple:
    """The exceptions that mean bad input or a bad store, reported as one line (a bug keeps its traceback)."""
    from apem.book import BookError
    from apem.runner.chunks import ChunkFailure
    from apem.config import ConfigError
    from apem.data import DataError
    from apem.runner.distributed import ClusterError
    from apem.models import WeightsError
    from apem.numerics import EnvironmentMismatch
    from apem.store import StoreError

    return (ConfigError, DataError, WeightsError, StoreError, EnvironmentMismatch, BookError, ValueError, ClusterError,
            ChunkFailure)


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except user_errors() as e:
        print(f"apem: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("apem: interrupted; what was finished is stored, run the same command again to resume", file=sys.stderr)
        return 130
    except OSError as e:
        import errno

        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" {e.filename}" if e.filename else ""
        print(f"apem: error: cannot write{where}: {e.strerror} (a read-only results folder or a full disk); "
              "what was finished is stored: free space or choose another folder with --results, then run again",
              file=sys.stderr)
        return 2
