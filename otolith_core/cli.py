"""``otolith``: the same core calls as the dashboard, from a terminal.

    otolith demo --out DIR [--n N] [--seed S] [--flip N]
    otolith models
    otolith extract --data PATH --model NAME [--device ...] [--precision ...] [--batch-size N] [--cache-dir DIR]
                    [--npz FILE] [--shards N [--executor local|slurm|ray] [--cluster-config FILE] [--no-wait]]
    otolith extract --data PATH --model NAME --shard I/N      (one shard of the plan `--shards N` wrote)
    otolith merge | otolith shards [--cancel PLAN]
    otolith run --data PATH --models A,B --heads ridge,svc [--folds 10] [--seed 0] [--repeats R]
                [--group-column COL | --no-group-by-fish] [--holdout-column COL]
                [--combine A,B] [--covariates COL,COL [--impute-covariates]] [--scaling ...] [--bootstrap N]
                [--learning-curve] [--tie-level 0.05] [--age-range MIN MAX] [--exclude-unusable]
                [--no-chart | --png] --out DIR
    otolith run --embeddings NAME=FILE.npz[,NAME2=FILE2.npz] --heads ridge,svc --out DIR

Problems a user can fix are printed as one clear message (exit code 2), never as a stack trace.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

EXIT_OK, EXIT_NOTHING_EVALUATED, EXIT_USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    from .jobs import Cancelled
    from .encoders import ENCODER_ERRORS, error_message

    try:
        return args.handler(args)
    except ENCODER_ERRORS as exc:
        print(f"error: {error_message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyboardInterrupt, Cancelled):
        print("\ninterrupted: finished batches are kept in the cache; run the same command to resume", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otolith", description="Compare frozen vision encoders for otolith age reading.")
    sub = parser.add_subparsers(dest="command")

    demo = sub.add_parser("demo", help="write the synthetic demo data set")
    demo.add_argument("--out", required=True, help="folder to write (images/ and manifest.csv)")
    demo.add_argument("--n", type=int, default=400, help="approximate number of images (default 400)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--flip", type=int, default=0, metavar="N",
                      help="give N fish a wrong reader age (3+ years off; column 'flipped' keeps the age before), to "
                           "try the doubtful-age review")
    demo.set_defaults(handler=_cmd_demo)

    models = sub.add_parser("models", help="list registered encoders and whether their weights are here")
    models.add_argument("--weights-dir", help="Hugging Face cache folder for weights (default: HF_HUB_CACHE)")
    models.set_defaults(handler=_cmd_models)

    extract = sub.add_parser("extract", help="compute and cache one encoder's embeddings")
    _data_arguments(extract)
    extract.add_argument("--model", required=True, help="registry name, ARCH:TAG, timm:MODEL.TAG, hf-hub:org/name or "
                                                        "local-dir:/path, optionally @revision=REV (hub weights) and "
                                                        "then @pad|squash|crop[+clahe]")
    extract.add_argument("--npz", help="also export features, labels and paths to this .npz file")
    extract.add_argument("--job-id", help=argparse.SUPPRESS)  # set by the dashboard for the job it launched
    sharding = extract.add_argument_group("shards (several processes or machines; README: Beyond one machine)")
    sharding.add_argument("--shards", type=int, metavar="N",
                          help="plan the extraction as N shards (the images hashed here, once), run them through "
                               "--executor, and merge them into the cache")
    sharding.add_argument("--executor", default="local", choices=["local", "slurm", "ray"],
                          help="where --shards run: local processes (default), a SLURM job array (submitit) or Ray")
    sharding.add_argument("--cluster-config", metavar="FILE",
                          help="TOML with the cluster's settings: partition, gpus_per_task, cpus_per_task, mem_gb, "
                               "time_minutes, array_parallelism, account, qos, ray_address")
    sharding.add_argument("--no-wait", action="store_true",
                          help="submit the shards and return; `otolith merge` (or the next extract or run) merges them")
    sharding.add_argument("--storage-is-shared", action="store_true",
                          help="submit although the data, cache or weights look like storage only this machine sees")
    sharding.add_argument("--plan-only", action="store_true",
                          help="with --shards N: write the plan and print each shard's command, run nothing (for your "
                               "own job scripts, which then run `--shard I/N`)")
    sharding.add_argument("--shard", metavar="I/N",
                          help="run shard I of N of the plan `--shards N` wrote for these options (in your own job "
                               "script); writes only into the shard's folder")
    _extraction_arguments(extract)
    extract.set_defaults(handler=_cmd_extract)

    shard = sub.add_parser("shard", help="run one shard of a plan (the executors start these)")
    shard.add_argument("--plan", required=True, help="the plan's folder (cache/shards/<id>)")
    shard.add_argument("--index", type=int, required=True)
    shard.set_defaults(handler=_cmd_shard)

    merge = sub.add_parser("merge", help="fold finished shards into the cache (the next extract or run does it too)")
    merge.add_argument("--cache-dir", help="embedding cache (default: $OTOLITH_CACHE_DIR or ./cache)")
    merge.set_defaults(handler=_cmd_merge)

    shards = sub.add_parser("shards", help="where each shard plan in the cache stands; --cancel cancels its jobs")
    shards.add_argument("--cache-dir", help="embedding cache (default: $OTOLITH_CACHE_DIR or ./cache)")
    shards.add_argument("--cancel", metavar="PLAN", help="cancel the scheduler's jobs of this plan (its id)")
    shards.set_defaults(handler=_cmd_shards)

    job = sub.add_parser("compare-job", help="run a comparison the dashboard recorded as a job (the dashboard starts "
                                             "these itself)")
    job.add_argument("--cache-dir", required=True, help="the cache folder holding the job's record")
    job.add_argument("--job-id", required=True)
    job.set_defaults(handler=_cmd_compare_job)

    run = sub.add_parser("run", help="cross-validate heads on several encoders and write the results")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="folder of age sub-folders, or a CSV manifest")
    source.add_argument("--embeddings", help="NAME=FILE.npz[,NAME2=FILE2.npz]: evaluate embeddings you already have")
    run.add_argument("--age-range", nargs=2, type=int, metavar=("MIN", "MAX"), help="clip ages into [MIN, MAX]")
    run.add_argument("--preset", help="species settings from config.yaml (e.g. cod: ages clipped to 1..10)")
    _column_arguments(run)
    run.add_argument("--models", help="comma-separated encoders (with --data); NAME@pad+clahe etc. adds a "
                                      "preprocessing variant as an encoder of its own (see `otolith models`)")
    run.add_argument("--combine", action="append", default=[], metavar="A,B",
                     help="also evaluate these encoders (of --models or --embeddings) concatenated, as a row 'A + B'; "
                          "each part scaled as its own entry says; repeatable")
    run.add_argument("--covariates", metavar="COL,COL",
                     help="manifest columns added to every encoder as features, e.g. length,month,area; each "
                          "one numeric (standardised in-fold), month (sin/cos) or categorical (one-hot), inferred or "
                          "given as NAME:KIND; adds the rows 'covariates' (them alone) and 'A + covariates'")
    run.add_argument("--impute-covariates", action="store_true",
                     help="fill a blank covariate with the training fold's median (most common category) instead of "
                          "skipping the image")
    run.add_argument("--heads", default="ridge,svc",
                     help="comma-separated heads: ridge, svc (the paper's), ridge-cv (alpha chosen inside each training "
                          "fold), logistic (C chosen by an inner CV), knn (cosine, k chosen by an inner CV); "
                          "default ridge,svc")
    run.add_argument("--alpha", type=float, default=6.0, help="ridge alpha (default 6, as in the paper)")
    run.add_argument("--C", type=float, default=0.1, help="linear SVC C (default 0.1, as in the paper)")
    run.add_argument("--scaling", default="auto", choices=["auto", "none", "l2", "standardize"],
                     help="feature scaling fitted inside each training fold; auto (default): each encoder's own "
                          "(`otolith models`: l2 for learned encoders, none for the built-ins)")
    run.add_argument("--class-weight", default="none", choices=["none", "balanced"],
                     help="balanced: each image weighs n / (n_ages x images of its age) in the training fold, so rare "
                          "(old) ages count as much as common ones: ridge and ridge-cv through sample weights, svc and "
                          "logistic through class_weight, their inner searches scored with the same weights. knn has "
                          "no class weights: it stays unweighted, with a warning (default none)")
    run.add_argument("--folds", type=int, help="k of the stratified k-fold CV (default 10); with --holdout-column the "
                                               "folds are that column's values")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--repeats", type=int, default=1, help="R x k-fold CV with seeds seed..seed+R-1 (default 1)")
    grouping = run.add_mutually_exclusive_group()
    grouping.add_argument("--group-by-fish", dest="group_by_fish", action="store_true", default=None,
                          help="keep all photos of a fish in one fold (default: on when the data has fish_id repeats)")
    grouping.add_argument("--no-group-by-fish", dest="group_by_fish", action="store_false")
    run.add_argument("--group-column", metavar="COL",
                     help="keep every value's images in one fold instead of each fish's: a manifest column such as "
                          "station_id, or the path column (one tray photo); a blank value is a group of its own, and "
                          "values that one fish's photos share are merged, so a fish is never split. The bootstrap "
                          "resamples these groups and the heads' inner CV splits by them. Not with --no-group-by-fish")
    run.add_argument("--holdout-column", metavar="COL",
                     help="leave-one-group-out: each value of this manifest column (e.g. cruise_id, year) is the test "
                          "fold once (folds.csv names it; per_holdout.csv scores each value and all pooled); images "
                          "with a blank value are skipped; fish (or --group-column groups) must not span two values. "
                          "Not with --folds or --repeats > 1")
    run.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                     help="draws for the 95%% bootstrap intervals in summary.csv (fish resampled; default 1000; 0: none)")
    run.add_argument("--tie-level", type=float, default=0.05, metavar="P",
                     help="level at which summary.csv marks the models that cannot be told apart from the best "
                          "(corrected paired t-test against the best, Holm-corrected; default 0.05)")
    run.add_argument("--learning-curve", action="store_true",
                     help="also train on 10%%, 20%%, ..., 100%% of each training fold (learning_curve.csv)")
    run.add_argument("--exclude-unusable", action="store_true",
                     help="leave out the images a reader flagged unusable on the Review page (readings in the cache "
                          "folder); each is named, and listed in skipped.csv")
    run.add_argument("--out", required=True, help="results folder")
    charts = run.add_mutually_exclusive_group()
    charts.add_argument("--no-chart", action="store_true", help="skip the chart (comparison.svg)")
    charts.add_argument("--png", action="store_true", help="also write the chart as comparison.png")
    _extraction_arguments(run)
    run.set_defaults(handler=_cmd_run)
    return parser


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="folder of age sub-folders, or a CSV manifest")
    parser.add_argument("--age-range", nargs=2, type=int, metavar=("MIN", "MAX"), help="clip ages into [MIN, MAX]")
    parser.add_argument("--preset", help="species settings from config.yaml (e.g. cod)")
    _column_arguments(parser)


def _column_arguments(parser: argparse.ArgumentParser) -> None:
    """A lab export read as it is: which of its columns hold what."""
    mapping = parser.add_argument_group("manifest columns (a lab's export read as it is)")
    mapping.add_argument("--path-column", default="path", metavar="COL", help="image paths or URLs (default: path)")
    mapping.add_argument("--age-column", default="age", metavar="COL", help="reader ages (default: age)")
    mapping.add_argument("--fish-column", default="fish_id", metavar="COL",
                         help="photos of one fish share its value (default: fish_id)")
    mapping.add_argument("--box-column", metavar="COL",
                         help="one column with each otolith's box: [[x0, y0], [x1, y1]], [x0, y0, x1, y1] or "
                              "x0,y0,x1,y1 (default: the x0, y0, x1, y1 columns when present)")
    mapping.add_argument("--box-format", default="xyxy", choices=["xyxy", "xywh"],
                         help="xyxy: corners (default); xywh: x0, y0, width, height")
    mapping.add_argument("--id-column", metavar="COL",
                         help="a column naming each image (e.g. measurement_id); default: its path (a URL without "
                              "its query string) plus its box")


def _columns(args: argparse.Namespace):
    from .data import ManifestColumns

    return ManifestColumns(path=args.path_column, age=args.age_column, fish=args.fish_column, box=args.box_column,
                           box_format=args.box_format, id=args.id_column)


def _extraction_arguments(parser: argparse.ArgumentParser) -> None:
    from .encoders.spec import DEFAULT_CLAHE_CLIP_LIMIT, DEFAULT_CLAHE_KERNEL

    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="arithmetic of the forward pass; auto: the encoder's choice for the device "
                             "(config.yaml), or the precision of embeddings already cached. fp16 needs CUDA")
    parser.add_argument("--batch-size", type=int, help="images per forward pass (default 32 on CUDA, 8 otherwise)")
    parser.add_argument("--cache-dir", help="embedding cache (default: $OTOLITH_CACHE_DIR or ./cache)")
    parser.add_argument("--weights-dir", help="Hugging Face cache folder for weights (default: HF_HUB_CACHE)")
    parser.add_argument("--clahe-clip-limit", type=float, metavar="X",
                        help=f"contrast limit of an encoder's @clahe variant, in (0, 1] (default {DEFAULT_CLAHE_CLIP_LIMIT})")
    parser.add_argument("--clahe-kernel", type=float, metavar="F",
                        help=f"CLAHE tile side as a fraction of the image side, in (0, 1] (default {DEFAULT_CLAHE_KERNEL})")


def _combined(groups: Sequence[str], embeddings: dict, failed: dict) -> list[tuple[str, ...]]:
    """``--combine`` values -> tuples of evaluated encoder names. A name may be written as on --models (a variant
    as ``@clahe+pad`` runs as ``@pad+clahe``); a group with a part that was not evaluated is skipped, with its
    reason in ``failed`` (and run.json), and the rest of the run goes on."""
    from .encoders import ENCODER_ERRORS, resolve_encoder
    from .comparison import combined_label

    out = []
    for group in groups:
        parts = []
        for part in (p.strip() for p in group.split(",") if p.strip()):
            if part not in embeddings:
                try:
                    part = resolve_encoder(part).name
                except ENCODER_ERRORS:
                    pass
            parts.append(part)
        missing = [p for p in parts if p not in embeddings]
        if missing or len(parts) < 2:
            why = (f"needs two or more evaluated encoders; not evaluated: {', '.join(missing)}" if missing
                   else "needs two or more encoders, e.g. --combine A,B")
            failed[combined_label(parts)] = why
            print(f"combination {combined_label(parts)} skipped: {why}", file=sys.stderr)
            continue
        out.append(tuple(parts))
    return out


def _variant_options(args: argparse.Namespace) -> dict:
    return {"clahe_clip_limit": args.clahe_clip_limit, "clahe_kernel": args.clahe_kernel}


# ----------------------------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DEMO_LABEL, write_demo_dataset

    start = time.perf_counter()
    manifest = write_demo_dataset(args.out, n_images=args.n, seed=args.seed, flip=args.flip)
    print(f"wrote the {DEMO_LABEL} to {manifest} in {time.perf_counter() - start:.1f} s")
    print(f"next: otolith run --data {manifest} --models otolith-morphometrics,pixels-32 --heads ridge,svc --out results")
    return EXIT_OK


def _cmd_models(args: argparse.Namespace) -> int:
    from .encoders import registry, weights_available
    from .encoders.spec import FITS, VARIANT_OPTIONS

    rows = [("name", "library", "year", "dim", "input", "scaling", "cpu/cuda", "download", "offline", "licence",
             "description")]
    for spec in registry().values():
        pre = spec.preprocessing
        size = f"{pre.size}px {pre.resize_mode}" if pre else "-"
        offline = "yes" if weights_available(spec, weights_dir=args.weights_dir) else "no"
        precision = "-" if spec.loader == "builtin" else f"{spec.precision.cpu}/{spec.precision.cuda}"
        rows.append((spec.name, spec.family, str(spec.year or ""), str(spec.embed_dim or "?"), size, spec.scaling, precision,
                     spec.download_size, offline, spec.licence.split(" (")[0], spec.description))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    print("\nAny other model: --model ARCH:TAG (OpenCLIP), timm:MODEL.TAG, hf-hub:org/name (OpenCLIP or timm repo) "
          "or local-dir:/path (a folder with open_clip_config.json or timm's config.json)")
    print(f"Preprocessing variants: NAME@OPTION[+OPTION], options {', '.join(VARIANT_OPTIONS)} (one of "
          f"{', '.join(FITS)}), e.g. pixels-32@pad+clahe; each variant is an encoder of its own")
    print("Pinned hub weights: NAME@revision=REV (a 40-character commit hash, branch or tag) before any variant, "
          "e.g. hf-hub:org/name@revision=REV@pad; unpinned, the revision the Hugging Face cache's main names is "
          "used and recorded")
    for spec in registry().values():
        if "(" in spec.licence:
            print(f"{spec.name}: {spec.licence}")
    return EXIT_OK


def _load_data(args: argparse.Namespace, job=None):
    """The data set of ``--data``, photos behind URLs downloaded into the cache (progress into ``job`` when given)."""
    from .data import load_dataset
    from .encoders import presets

    age_range = tuple(args.age_range) if args.age_range else None
    if args.preset:
        known = presets()
        if args.preset not in known:
            raise KeyError(f"unknown preset {args.preset!r}; choose from {sorted(known)}")
        if age_range is None and known[args.preset].get("age_range"):
            age_range = tuple(known[args.preset]["age_range"])
    dataset = load_dataset(args.data, age_range=age_range, columns=_columns(args), cache_dir=_cache_dir(args))
    if dataset.to_download:
        dataset = _download(dataset, job)
    print(f"data: {len(dataset)} images from {dataset.source}"
          + (f", {len(dataset.skipped)} skipped" if dataset.skipped else "")
          + (f", ages clipped to {age_range[0]}..{age_range[1]}" if age_range else ""))
    return dataset


def _download(dataset, job=None):
    """``dataset`` with its photos behind URLs downloaded, a progress bar on a terminal; failures named."""
    from tqdm import tqdm

    from .data import download_missing

    photos = len({r.path for r in dataset.to_download})
    print(f"downloading {photos} photos behind URLs into the cache", file=sys.stderr)
    bar = tqdm(total=photos, desc="download", unit="photo", file=sys.stderr, disable=not sys.stderr.isatty())

    def progress(done: int, total: int, failed: int) -> None:
        if job is not None:
            job.downloading(done, total, failed)
        bar.n = done
        bar.refresh()

    before = len(dataset.skipped)
    try:
        dataset = download_missing(dataset, progress=progress)
    finally:
        bar.close()
    failures = dataset.skipped[before:]
    for failure in failures[:20]:
        print(f"  skipped {failure.where()}: {failure.reason}", file=sys.stderr)
    if len(failures) > 20:
        print(f"  ... and {len(failures) - 20} more (skipped.csv lists them all)", file=sys.stderr)
    return dataset


def _cache_dir(args: argparse.Namespace) -> Path:
    from .cache import default_cache_dir

    return Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()


def _extract_one(dataset, spec, args, job=None):
    """Extract what the cache lacks, with a progress bar on a terminal (and into ``job``'s record when given)."""
    from tqdm import tqdm

    from .embeddings import extract_embeddings

    bar = None

    def progress(done: int, total: int, failed: int) -> None:
        nonlocal bar
        if job is not None:
            job.progress(done, total, failed)
        if bar is None:
            bar = tqdm(total=total, desc=f"{spec.name}", unit="img", file=sys.stderr, dynamic_ncols=True,
                       disable=not sys.stderr.isatty())
        bar.n = done
        bar.refresh()

    try:
        return extract_embeddings(dataset, spec, cache_dir=_cache_dir(args), device=args.device,
                                  precision=args.precision, batch_size=args.batch_size, weights_dir=args.weights_dir,
                                  progress=progress)
    finally:
        if bar is not None:
            bar.close()


def _cmd_extract(args: argparse.Namespace) -> int:
    from .embeddings import save_npz
    from .jobs import ExtractionRequest, JobRecorder
    from .encoders import resolve_encoder

    if args.shard:
        return _one_shard(args)
    alone = [flag for flag, given in (("--executor", args.executor != "local"), ("--cluster-config", args.cluster_config),
                                      ("--no-wait", args.no_wait), ("--plan-only", args.plan_only)) if given]
    if alone and not args.shards:
        print(f"error: {', '.join(alone)} go(es) with --shards N (how many shards to cut the extraction into)",
              file=sys.stderr)
        return EXIT_USAGE
    _merge_shards(_cache_dir(args))
    if args.shards:
        return _extract_in_shards(args)
    columns = _columns(args)
    request = ExtractionRequest(args.data, args.model, args.precision, args.device, args.batch_size, args.weights_dir,
                         args.clahe_clip_limit, args.clahe_kernel, None if columns.native else asdict(columns))
    with JobRecorder(_cache_dir(args), request, args.job_id) as job:  # shows on the dashboard, can be cancelled there
        dataset = _load_data(args, job)
        spec = resolve_encoder(args.model, weights_dir=args.weights_dir, **_variant_options(args))
        emb = _extract_one(dataset, spec, args, job)
        job.finished_with(embedded=len(emb.rows), extracted=emb.n_extracted)
    cached = len(emb.rows) - emb.n_extracted
    print(f"{spec.name}: {len(emb.rows)} images embedded in {emb.precision} ({emb.n_extracted} extracted now, "
          f"{max(cached, 0)} from the cache), {len(emb.failures)} failed; cache {_cache_dir(args)}")
    for failure in emb.failures[:20]:
        print(f"  skipped {failure.where()}: {failure.reason}")
    if args.npz:
        print(f"wrote {save_npz(args.npz, dataset, emb)}")
    return EXIT_OK if len(emb.rows) else EXIT_NOTHING_EVALUATED


def _merge_shards(cache_dir: Path, *, quiet: bool = True) -> None:
    """Fold the shards finished since the last merge into the cache (``otolith merge``; every extract and run)."""
    if not (cache_dir / "shards").is_dir():
        if not quiet:
            print(f"no shards in {cache_dir}")
        return
    from .shards import merge_shards

    report = merge_shards(cache_dir)
    if report.merged_batches or not quiet:
        print(f"merged {report.merged_images} images ({report.merged_batches} batches"
              + (f", {report.failed_images} images that could not be used" if report.failed_images else "")
              + f") from the shards of {len(report.plans)} plan(s) into {cache_dir}")
    for problem in report.problems:
        print(f"  not merged: {problem}")


def _cmd_merge(args: argparse.Namespace) -> int:
    _merge_shards(_cache_dir(args), quiet=False)
    return EXIT_OK


def _cmd_shard(args: argparse.Namespace) -> int:
    return _run_one_shard(lambda: args.plan, args.index)


def _one_shard(args: argparse.Namespace) -> int:
    """``otolith extract --shard I/N``: shard I of the plan the submitter wrote for these options."""
    from .shards import find_plan

    try:
        index, n = (int(part) for part in args.shard.split("/"))
    except ValueError:
        print(f"error: --shard takes I/N (e.g. 3/16), got {args.shard!r}", file=sys.stderr)
        return EXIT_USAGE
    columns = _columns(args)
    return _run_one_shard(lambda: find_plan(_cache_dir(args), args.data, args.model, _variant_options(args),
                                            args.precision, n, None if columns.native else asdict(columns)).folder,
                          index)


def _run_one_shard(plan_folder, index: int) -> int:
    """Run shard ``index`` of the plan in ``plan_folder()``; a missing plan or a shard run elsewhere: one line."""
    from .shards import ShardBusy, run_shard

    try:
        outcome = run_shard(plan_folder(), index, progress=_printed_progress(f"shard {index}"))
    except (FileNotFoundError, ValueError, ShardBusy) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"shard {index}: {outcome.embedded} of {outcome.total} images embedded ({outcome.extracted} now), "
          f"{outcome.failed} could not be used; `otolith merge` folds it into the cache")
    return EXIT_OK


def _extract_in_shards(args: argparse.Namespace) -> int:
    """``otolith extract --shards N --executor E``: plan, submit, wait (recorded as a job: each shard's state on
    the dashboard's card, and a cancel there cancels them), merge."""
    from .cluster import ShardsFailed, read_cluster_config, require
    from .jobs import ExtractionRequest

    cache = _cache_dir(args)
    try:
        config = read_cluster_config(args.cluster_config)
        require(args.executor)
    except (ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.shards < 1:
        print(f"error: --shards must be at least 1, got {args.shards}", file=sys.stderr)
        return EXIT_USAGE
    if args.no_wait and args.executor == "local":
        print("error: --no-wait is for a cluster's scheduler: local shards are run by this command, which waits for "
              "them", file=sys.stderr)
        return EXIT_USAGE
    columns = _columns(args)
    if args.plan_only:
        return _plan_only(args)
    request = ExtractionRequest(args.data, args.model, args.precision, args.device, args.batch_size, args.weights_dir,
                                args.clahe_clip_limit, args.clahe_kernel, None if columns.native else asdict(columns),
                                shards=args.shards, executor=args.executor, cluster_config=args.cluster_config)
    try:
        return _sharded_job(args, cache, config, request)
    except ShardsFailed as exc:  # recorded on the job as its reason
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOTHING_EVALUATED


def _plan_only(args: argparse.Namespace) -> int:
    """``--shards N --plan-only``: the plan, and the command each of your own job script's tasks runs."""
    import shlex

    from .shards import plan_shards

    dataset = _load_data(args)
    plan = plan_shards(dataset, args.model, cache_dir=_cache_dir(args), n_shards=args.shards, precision=args.precision,
                       device=args.device, batch_size=args.batch_size, weights_dir=args.weights_dir,
                       variant=_variant_options(args))
    print(f"plan {plan.folder}: {plan.n_images} images to extract in {plan.n_shards} shards; nothing runs now. Each "
          f"task of your job script runs one shard, e.g. shard 0:\n  {shlex.join(plan.shard_command(0))}\n"
          f"(or `otolith extract` with the same options and `--shard I/{plan.n_shards}`); then `otolith merge`")
    return EXIT_OK


def _sharded_job(args: argparse.Namespace, cache: Path, config, request) -> int:
    from .cluster import ShardsFailed
    from .embeddings import extract_embeddings, save_npz
    from .encoders import resolve_encoder
    from .jobs import Cancelled, JobRecorder
    from .shards import merge_shards, plan_shards, shard_states

    with JobRecorder(cache, request, args.job_id) as job:
        dataset = _load_data(args, job)  # photos behind URLs are downloaded here, once, into the cache
        spec = resolve_encoder(args.model, weights_dir=args.weights_dir, **_variant_options(args))
        remote = (args.executor == "slurm" and config.slurm_cluster == "slurm") or (args.executor == "ray"
                                                                                    and config.ray_address)
        if remote and not _cluster_sees_everything(dataset, spec, cache, args):
            raise ValueError("nothing submitted: see the messages above")
        plan = plan_shards(dataset, args.model, cache_dir=cache, n_shards=args.shards, precision=args.precision,
                           device=args.device, batch_size=args.batch_size, weights_dir=args.weights_dir,
                           variant=_variant_options(args))
        print(f"plan {plan.folder}: {plan.n_images} images to extract in {plan.n_shards} shards")
        failed: dict[int, str] = {}
        merged = 0
        if plan.n_images:
            submission, cancel_asked = _submitted(plan, args.executor, config)

            def record(states: dict[int, str]) -> None:
                tasks = {task.index: task for task in submission.tasks}  # local shards get their pid when started
                job.sharded([{"index": s.index, "images": s.images, "embedded": s.embedded, "failed": s.failed,
                              "state": states.get(s.index, "finished").split(":")[0],
                              "why": states.get(s.index, "").partition(": ")[2],
                              "job": f"{tasks[s.index].executor} {tasks[s.index].job_id}" if s.index in tasks else "",
                              "log": tasks[s.index].log if s.index in tasks else ""} for s in shard_states(plan)])

            try:
                if cancel_asked:  # while submitting: now that they are recorded, stop them
                    raise Cancelled()
                for task in submission.tasks:
                    print(f"  shard {task.index}: " + (f"{task.executor} job {task.job_id}" if task.job_id else
                                                       "waiting for a free core")
                          + (f", log {task.log}" if task.log else ""), flush=True)
                if args.no_wait:
                    job.finished_with(submitted=plan.n_images)
                    print(f"submitted; when they end, `otolith merge --cache-dir {cache}` folds them into the cache "
                          "(the next extract or run does it by itself); `otolith shards` tells where they stand")
                    return EXIT_OK
                failed = submission.wait(on_poll=record)
            except BaseException as exc:  # stop what was submitted (wait() has, when it was waiting)
                submission.cancel()
                if isinstance(exc, (Cancelled, KeyboardInterrupt)):
                    print("cancelled: the shards were stopped; their finished batches are merged", flush=True)
                    merge_shards(cache, plans=[plan.id])
                raise
            for index, why in sorted(failed.items()):
                print(f"  shard {index} failed: {why}; run the same command again to resume it")
            report = merge_shards(cache, plans=[plan.id])
            merged = report.merged_images
            print(f"merged {report.merged_images} images from {report.merged_batches} batches into {cache}")
            for problem in report.problems:
                print(f"  not merged: {problem}")
        emb = extract_embeddings(dataset, spec, cache_dir=cache, precision=args.precision, cached_only=True)
        job.finished_with(embedded=len(emb.rows), extracted=merged)
        if failed:
            raise ShardsFailed(f"{len(failed)} of {plan.n_shards} shards failed (shard {min(failed)}: "
                               f"{failed[min(failed)]}); run it again to resume them: finished batches are kept")
        if emb.pending:  # e.g. a batch the merge set aside: its shard embeds it again at the next run
            raise ShardsFailed(f"{len(emb.pending)} images are not in the cache after the merge (see 'not merged' "
                               "above); run the same command again to extract them")
    print(f"{spec.name}: {len(emb.rows)} of {len(dataset)} images in the cache, {len(emb.failures)} could not be used")
    if args.npz:
        print(f"wrote {save_npz(args.npz, dataset, emb)}")
    return EXIT_OK if len(emb.rows) else EXIT_NOTHING_EVALUATED


def _submitted(plan, executor: str, config):
    """(the shards handed to the scheduler, whether a cancel (SIGTERM) arrived meanwhile). A cancel waits until the
    shards are recorded, so none escapes it (the caller raises it then); a scheduler that refuses them is a one-line
    error. (A handler, not a blocked signal: processes started meanwhile would inherit a blocked SIGTERM.)"""
    import signal

    from .cluster import submit

    asked: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: asked.append(signum))
    try:
        return submit(plan, executor, config), bool(asked)
    except (ImportError, OSError, RuntimeError, ConnectionError) as exc:  # sbatch refused, no Ray cluster there
        raise ValueError(f"the {executor} scheduler did not take the shards: {exc}") from exc
    finally:
        signal.signal(signal.SIGTERM, previous)


def _cluster_sees_everything(dataset, spec, cache: Path, args: argparse.Namespace) -> bool:
    """Before submitting to a cluster: the weights are downloaded (compute nodes are often offline) and the data,
    the cache and the weights lie on storage every node sees; prints what is wrong."""
    from .cluster import storage_problems
    from .encoders import weights_available

    paths = {"the cache folder": cache, "the data": dataset.source}
    for folder in sorted({str(r.path.parent) for r in dataset.records})[:20]:  # photos may lie in many folders
        paths[f"the photos in {folder}"] = folder
    if spec.family != "builtin":
        if not weights_available(spec, weights_dir=args.weights_dir):
            print(f"error: the weights of {spec.name} are not on this machine; compute nodes are often offline, so "
                  "download them first into a folder every node sees (`--weights-dir`): e.g. run `otolith extract` "
                  "on a few images here with the same --weights-dir", file=sys.stderr)
            return False
        from huggingface_hub import constants

        paths["the weights folder"] = args.weights_dir or constants.HF_HUB_CACHE
    errors, warnings = storage_problems(paths)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if errors and not args.storage_is_shared:
        print("nothing submitted; if every node does see these paths, add --storage-is-shared", file=sys.stderr)
        return False
    return True


def _printed_progress(label: str):
    last = [0.0]

    def progress(done: int, total: int, failed: int) -> None:
        if time.time() - last[0] > 10 or done == total:
            last[0] = time.time()
            print(f"{label}: {done}/{total} images" + (f", {failed} failed" if failed else ""), flush=True)

    return progress


def _cmd_shards(args: argparse.Namespace) -> int:
    from .cluster import cancel, scheduler_states
    from .shards import SHARDS_FOLDER, read_plan, shard_states

    cache = _cache_dir(args)
    plans = sorted((cache / SHARDS_FOLDER).glob("*/plan.json"))
    if not plans:
        print(f"no shard plans in {cache}")
        return EXIT_OK
    for plan_file in plans:
        plan = read_plan(plan_file.parent)
        if args.cancel and plan.id != args.cancel:
            continue
        if args.cancel:
            for line in cancel(plan):
                print(line)
            continue
        print(f"plan {plan.id}: {plan.encoder} on {plan.data}, {plan.n_images} images in {plan.n_shards} shards")
        scheduler = scheduler_states(plan)
        for state in shard_states(plan):
            print(f"  shard {state.index}: {state.embedded + state.failed}/{state.images} images"
                  + (f" ({state.failed} could not be used)" if state.failed else "")
                  + (", done" if state.done else "") + f", {state.merged}/{state.batches} batches merged"
                  + (f", scheduler: {scheduler[state.index]}" if state.index in scheduler else ""))
    return EXIT_OK


def _cmd_compare_job(args: argparse.Namespace) -> int:
    from .comparison_job import run_comparison_job
    from .jobs import ComparisonRequest, JobRecorder, read_job

    recorded = read_job(args.cache_dir, args.job_id)
    if recorded is None or not isinstance(recorded.request, ComparisonRequest):
        print(f"error: no comparison job {args.job_id} is recorded in {args.cache_dir}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with JobRecorder(args.cache_dir, recorded.request, args.job_id) as job:  # records the failure's reason too
            result = run_comparison_job(recorded.request, args.cache_dir, job)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOTHING_EVALUATED
    print(f"stored the comparison of {len(result.results)} models under {recorded.request.key}")
    return EXIT_OK


def _second_readings(dataset, cache_dir):
    """Second readings of ``dataset`` (its manifest's second_age, readings typed in the dashboard into this cache),
    bad values named on stderr."""
    from .readings import load_readings, second_readings

    typed = load_readings(cache_dir) if cache_dir is not None else None
    found = second_readings(dataset, typed, cache_dir=cache_dir)
    for problem in found.problems():
        print(f"warning: {problem}", file=sys.stderr)
    return found


def _without_unusable(dataset, cache_dir):
    """(``dataset`` without the images a reader flagged unusable, those images as ``Skipped``), each one named
    (``--exclude-unusable``)."""
    from .exchange import collect_readings, exclude_unusable
    from .readings import load_readings, second_readings

    found = second_readings(dataset, load_readings(cache_dir), cache_dir=cache_dir)  # problems: named later, once
    kept, excluded = exclude_unusable(dataset, collect_readings(dataset, found))
    print(f"--exclude-unusable: {len(excluded)} image(s) flagged unusable left out"
          + (" (none is flagged)" if not excluded else ":"))
    for skipped in excluded[:20]:
        print(f"  {skipped.image}: {skipped.reason}")
    if len(excluded) > 20:
        print(f"  ... and {len(excluded) - 20} more (skipped.csv lists them all)")
    return kept, excluded


def _exchange(dataset, second, comparison):
    """The age-reading exchange of ``dataset``'s human readers with the models of ``comparison`` (first repeat),
    summarised on stdout; None when no image has ages by two human readers."""
    from .exchange import ALL_READERS, collect_readings, exchange_report, has_exchange, unusable_images

    per_reader = collect_readings(dataset, second)
    unusable = unusable_images(per_reader)
    if unusable:
        print(f"note: {len(unusable)} image(s) in this run are flagged unusable by a reader (e.g. {unusable[0]}); "
              f"--exclude-unusable leaves them out")
    if not has_exchange(per_reader):
        return None
    report = exchange_report(per_reader, comparison.per_image(0))
    everyone = report.readers.set_index("reader").loc[ALL_READERS]
    humans = report.readers.loc[report.readers["kind"] == "human", "reader"]
    print(f"exchange: {report.n_images} images read by two or more of {len(humans)} readers ({', '.join(humans)}), "
          f"{report.n_no_mode} with no modal age (a tie: no agreement); between the readers APE "
          f"{everyone.ape_pct:.1f} %, CV {everyone.cv_pct:.1f} % (exchange_report.csv, exchange_tests.csv, "
          f"exchange_bias.csv, exchange_by_age.csv, exchange_images.csv)")
    return report


def _cmd_run(args: argparse.Namespace) -> int:
    from .covariates import CovariateRequest
    from .comparison import compare
    from .heads import HeadSpec
    from .encoders import ENCODER_ERRORS, error_message, resolve_encoders
    from .report import provenance, write_results
    from .ties import TIE_SENTENCE, check_level

    heads = [HeadSpec(h.strip(), alpha=args.alpha, C=args.C, scaling=args.scaling, class_weight=args.class_weight)
             for h in args.heads.split(",") if h.strip()]
    if args.impute_covariates and not args.covariates:
        raise ValueError("--impute-covariates needs --covariates COL,COL")
    covariates = CovariateRequest.parse(args.covariates or "", impute=args.impute_covariates)
    check_level(args.tie_level)  # before anything is extracted
    _check_fold_options(args)
    failed: dict[str, str] = {}
    specs = {}
    excluded = ()  # images left out by --exclude-unusable
    if args.embeddings:
        from .embeddings import load_npz_embeddings

        named = dict(_split_pair(item) for item in args.embeddings.split(",") if item.strip())
        dataset, embeddings = load_npz_embeddings(named)
        if args.age_range or args.preset:
            raise ValueError("--age-range/--preset apply to --data; clip the labels in your .npz files instead")
        if args.exclude_unusable:
            raise ValueError("--exclude-unusable applies to --data: readings are matched to the photos; drop the "
                             "images from your .npz files instead")
        cache_dir = None
    else:
        if not args.models:
            raise ValueError("give --models A,B (see `otolith models`)")
        dataset = _load_data(args)
        _check_fold_columns(dataset, args)  # before any extraction
        cache_dir = _cache_dir(args)
        _merge_shards(cache_dir)  # shards finished on a cluster since the last run
        if args.exclude_unusable:
            dataset, excluded = _without_unusable(dataset, cache_dir)
        embeddings = {}
        resolved, failed = resolve_encoders([m.strip() for m in args.models.split(",") if m.strip()],
                                            weights_dir=args.weights_dir, **_variant_options(args))
        for name, message in failed.items():
            print(f"encoder {name} skipped: {message}", file=sys.stderr)
        for name, spec in resolved.items():
            try:
                emb = _extract_one(dataset, spec, args)
            except ENCODER_ERRORS as exc:
                failed[name] = error_message(exc)
                print(f"encoder {name} skipped: {failed[name]}", file=sys.stderr)
                continue
            specs[spec.name] = spec
            if len(emb.rows) == 0:
                failed[spec.name] = "no image could be embedded"
                continue
            embeddings[spec.name] = emb
            print(f"{spec.name}: {len(emb.rows)} images, {emb.precision} ({emb.n_extracted} extracted now)")
    if not embeddings:
        print("nothing could be evaluated: every encoder failed (see above)", file=sys.stderr)
        return EXIT_NOTHING_EVALUATED
    comparison = compare(dataset, embeddings, heads, n_folds=10 if args.folds is None else args.folds, seed=args.seed,
                         repeats=args.repeats, group_by_fish=args.group_by_fish, group_column=args.group_column,
                         holdout_column=args.holdout_column, with_learning_curve=args.learning_curve,
                         bootstrap_draws=args.bootstrap, scalings={n: s.scaling for n, s in specs.items()},
                         combined=_combined(args.combine, embeddings, failed), covariates=covariates,
                         failed_encoders=failed)
    print(f"folds: {comparison.folds_text}")
    for note in comparison.warnings:
        print(note, file=sys.stderr)
    second = _second_readings(dataset, cache_dir)  # the manifest's second_age, or readings typed on the Review page
    run_info = provenance(comparison, dataset, specs, heads, cache_dir=cache_dir, second=second,
                          tie_level=args.tie_level)
    if args.exclude_unusable:
        run_info["excluded_unusable"] = [{"image": s.image, "reason": s.reason} for s in excluded]
    if "second_readings" in run_info:
        readers = run_info["second_readings"]
        print(f"{readers['n_images']} images read twice: between the two readers APE {readers['ape_percent']:.1f} %, "
              f"CV {readers['cv_percent']:.1f} %, {readers['same_age']:.0%} the same age")
    exchange = _exchange(dataset, second, comparison)
    written = write_results(comparison, args.out, run_info=run_info, chart=not args.no_chart, png=args.png,
                            second=second.table, tie_level=args.tie_level, exchange=exchange)
    summary = comparison.summary_frame(tie_level=args.tie_level)
    print()
    enc_w, head_w = (int(summary[c].str.len().max()) for c in ("encoder", "head"))
    for row in summary.itertuples():
        print(f"  {row.encoder:<{enc_w}} {row.head:<{head_w}} accuracy {row.accuracy_mean:6.1%} ± {row.accuracy_sd:.1%}"
              f"{_tie_mark(row.accuracy_tied_with_best)}  ±1 {row.pm1_accuracy_mean:6.1%} ± {row.pm1_accuracy_sd:.1%}"
              f"{_tie_mark(row.pm1_accuracy_tied_with_best)}  RMSE {row.rmse_mean:.2f} ± {row.rmse_sd:.2f}"
              f"{_tie_mark(row.rmse_tied_with_best)}")
    print(f"  = : {TIE_SENTENCE.format(level=args.tie_level)}")
    _print_fish_level(comparison)
    print(f"\nwrote {len(written)} files to {Path(args.out).resolve()}"
          + (f"; {len(comparison.skipped)} images skipped (skipped.csv)" if comparison.skipped else ""))
    if failed:
        print(f"{len(failed)} encoder(s) failed: {', '.join(failed)} (run.json lists why)", file=sys.stderr)
    return EXIT_OK


def _tie_mark(tied) -> str:
    """`` =`` after a score that cannot be told apart from the best, blank otherwise (and for the baseline)."""
    import pandas as pd

    return " =" if pd.notna(tied) and bool(tied) else "  "  # NA: the baseline, in no test


def _print_fish_level(comparison) -> None:
    """The fish-level accuracy per model (per_fish.csv), or why there is none."""
    refused = comparison.fish_scores_refused
    if refused is not None:
        print(f"per_fish.csv not written. {refused.message}")
        return
    from .fish_level import FISH_RULES_TEXT

    per_fish = comparison.per_fish_frame()
    print(f"\nper fish ({int(per_fish['n_fish'].iloc[0])} fish, {int(per_fish['n_fish_several'].iloc[0])} with several "
          f"photos; {FISH_RULES_TEXT}):")
    enc_w, head_w = (int(per_fish[c].str.len().max()) for c in ("encoder", "head"))
    for row in per_fish.itertuples():
        print(f"  {row.encoder:<{enc_w}} {row.head:<{head_w}} accuracy {row.accuracy_mean:6.1%} ± {row.accuracy_sd:.1%}   "
              f"±1 {row.pm1_accuracy_mean:6.1%} ± {row.pm1_accuracy_sd:.1%}   RMSE {row.rmse_mean:.2f} ± {row.rmse_sd:.2f}")


def _check_fold_options(args: argparse.Namespace) -> None:
    """Refuse fold options that contradict each other, before anything is extracted."""
    if args.group_column and args.group_by_fish is False:
        raise ValueError(f"--group-column {args.group_column} keeps each value's images in one fold, which "
                         f"--no-group-by-fish forbids; drop one of the two")
    if args.holdout_column and args.folds is not None:
        raise ValueError(f"--folds does not apply with --holdout-column {args.holdout_column}: the folds are its "
                         f"values, one each; drop --folds")
    if args.holdout_column and args.repeats > 1:
        raise ValueError(f"--holdout-column {args.holdout_column} is one fixed split (leave-one-group-out): repeats "
                         f"would repeat it identically; drop --repeats")


def _check_fold_columns(dataset, args: argparse.Namespace) -> None:
    """A --group-column or --holdout-column the manifest lacks (or that cannot group) is named before extraction."""
    import numpy as np

    from .folds import column_values

    for option, column in (("--group-column", args.group_column), ("--holdout-column", args.holdout_column)):
        if column:
            column_values(dataset, np.arange(len(dataset.records)), column, option=option)


def _split_pair(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ValueError(f"--embeddings entry {item!r} must look like NAME=FILE.npz")
    name, file = item.split("=", 1)
    return name.strip(), file.strip()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
