"""The ``prrt`` command line: one subcommand per pipeline stage.

Every subcommand is a thin wrapper over the stage's entry point in
``prrt_utils`` so that a batch user never opens a notebook and the notebooks,
the Makefile and the CLI share one implementation.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from prrt_utils.data.cohort import PFS_THRESHOLD_MONTHS
from prrt_utils.io.log import configure, get_logger, scrub, write_debug
from prrt_utils.report.book import BookConfig
from prrt_utils.synthetic import SCENARIOS, SynthConfig

# Every default comes from the stage's own configuration, so that the CLI, the book and the API agree.
_BOOK = BookConfig()
_SYNTH = SynthConfig()
_SECOND = SynthConfig.second_centre()
DEFAULT_DATA = _BOOK.data_dir
DEFAULT_WORK = _BOOK.work_dir


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars only for a person at a terminal: redirected to a log file, tqdm's carriage
    returns would fill it with thousands of partial lines (``make book > log``)."""
    return not args.quiet and sys.stderr.isatty()


def _synth(args: argparse.Namespace) -> int:
    from prrt_utils.synthetic import SynthConfig, generate_cohort

    if args.second_centre:
        base = SynthConfig.second_centre(**({"n_patients": args.n} if args.n else {}),
                                         **({"seed": args.seed} if args.seed is not None else {}))
    else:
        base = SynthConfig(**({"n_patients": args.n} if args.n else {}),
                           **({"seed": args.seed} if args.seed is not None else {}))
    cfg = base.replace(censor_fraction=args.censor_fraction, clinical_size=args.clinical_size, image_format=args.format,
                       scenario=args.scenario)
    out = generate_cohort(cfg, Path(args.out), progress=_progress(args), n_jobs=args.jobs, overwrite=args.overwrite)
    print(f"synthetic cohort of {cfg.n_patients} patients in {out} (config hash {cfg.hash()})")
    return 0


def _own_cohort(args: argparse.Namespace) -> tuple[Path, float | None]:
    """``--cohort COHORT.yaml``: run the intake into data/intake/<name>/ and use it as the data folder."""
    if not getattr(args, "cohort", None):
        return Path(args.data), None
    from prrt_utils.data.cohort_source import CohortSource
    from prrt_utils.data.intake import intake, intake_dir

    source = CohortSource.load(args.cohort)
    data = intake(source, intake_dir(Path.cwd(), source))
    get_logger().info(f"own cohort {source.name!r} normalised into {data} (see {data / 'intake_report.csv'})")
    return data, float(source.pfs_threshold_months)


def _cohort(args: argparse.Namespace) -> int:
    from prrt_utils.data.cohort import CohortConfig, build_cohort

    data, yaml_threshold = _own_cohort(args)
    threshold = args.threshold if args.threshold is not None else (yaml_threshold or PFS_THRESHOLD_MONTHS)
    cfg = CohortConfig(pfs_threshold_months=threshold, on_error=args.on_error)
    cohort = build_cohort(cfg, data, Path(args.work))
    n_short = int(cohort["pfs_short"].sum()) if "pfs_short" in cohort else 0
    print(f"{len(cohort)} patients in {Path(args.work) / 'cohort' / 'cohort.csv'} ({n_short} with PFS <= {threshold:g} months)")
    return 0


def _check(args: argparse.Namespace) -> int:
    from prrt_utils.data.check import check, format_check
    from prrt_utils.data.cohort_source import CohortSource

    result = check(CohortSource.load(args.cohort_yaml), quick=args.quick, n_jobs=args.jobs, work_dir=args.work)
    print(format_check(result))
    return 0 if result["usable"].any() else 1


def _preprocess(args: argparse.Namespace) -> int:
    from prrt_utils.data.preprocess import PreprocessConfig, run_preprocessing

    data, work = _own_cohort(args)[0], Path(args.work)
    cohort_csv = work / "cohort" / "cohort.csv"
    if not cohort_csv.exists():
        get_logger().warning(f"{cohort_csv} not found: every folder under {data / 'imaging'} is processed (run "
                             "`prrt cohort` first to restrict to the validated cohort)")
    cfg = PreprocessConfig(on_error=args.on_error)
    index = run_preprocessing(cfg, cohort_csv if cohort_csv.exists() else None, data / "imaging", work,
                              progress=_progress(args), n_jobs=args.jobs)
    ok = int((index["status"] == "ok").sum())
    print(f"{ok} of {len(index)} patients preprocessed into {work / 'preprocessed'}"
          + ("" if ok else f"; nothing usable: the reasons are in {work / 'preprocessed' / 'exclusions.csv'}"))
    return 0 if ok else 1


def _book_config(args: argparse.Namespace) -> BookConfig:
    return BookConfig(
        data_dir=args.data, work_dir=args.work, seed=args.seed, n_jobs=args.jobs,
        models=tuple(getattr(args, "models", None) or ()), n_repeats=args.repeats, n_splits=args.folds,
        epochs=args.epochs, device=args.device, scheduler=args.scheduler,
        cohort_yaml=str(Path(args.cohort).resolve()) if args.cohort else "",
        ct_init=args.ct_init, ct_labels_dir=args.ct_labels, pretrain_data_dir=args.pretrain_data,
        profile=args.profile,
    )


def _pretrain_ct(args: argparse.Namespace) -> int:
    from prrt_utils.models.pretrain import PretrainConfig, pretrain_ct

    data = _own_cohort(args)[0]
    cfg = PretrainConfig(labels_dir=args.labels or "", population_dir=args.pretrain_data or "", seed=args.seed,
                         device=args.device, **({"epochs": args.epochs} if args.epochs else {}),
                         **({"population_size": args.patients} if args.patients else {}))
    result = pretrain_ct(Path(args.work), data, cfg, force=args.force, progress=_progress(args), n_jobs=args.jobs)
    card = result.card
    print(f"{'reused' if result.reused else 'wrote'} {result.checkpoint}: pretrained on {card['population']['kind']}; "
          f"{card['n_train']} patients trained, "
          f"{card['n_held_out']} held out, held-out Dice (mean over classes) {card['held_out_dice_mean_foreground']:.2f}")
    return 0


def _train_final(args: argparse.Namespace) -> int:
    from prrt_utils.models.final import train_final
    from prrt_utils.models.training import TrainConfig

    cfg = TrainConfig.profile(args.profile, seed=args.seed, device=args.device,
                              **({"epochs": args.epochs} if args.epochs else {}))
    for model in args.models:
        out = train_final(Path(args.work), Path(args.out) / model, model, cfg, force=args.force)
        print(f"{model}: package written to {out}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from prrt_utils.analysis.validation import run_validation, write_report

    data, yaml_threshold = _own_cohort(args)
    out = run_validation(args.model, data, Path(args.work), pfs_threshold_months=yaml_threshold or PFS_THRESHOLD_MONTHS,
                         n_jobs=args.jobs, progress=_progress(args))
    page = write_report(out, args.out)
    print(f"validation of {args.model} on {data}: predictions in {out}, report {page}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from prrt_utils.models.package import load_package
    from prrt_utils.report.patient_report import parse_labs, predict_patient, write_report

    pkg = load_package(args.model)
    labs = parse_labs(args.labs, tuple(pkg.manifest["lab_columns"]))
    result = predict_patient(pkg, args.patient, labs)
    out = write_report(pkg, result, args.out)
    print(f"report {result.report_id}: probability of PFS <= 12 months {result.prediction['prob']:.2f} "
          f"(fold models {result.prediction['prob_folds_q05']:.2f}-{result.prediction['prob_folds_q95']:.2f}); "
          f"written to {out}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from prrt_utils.report.book import run_models

    cfg = _book_config(args)
    timings = run_models(cfg, progress=_progress(args))  # the pages of the models of this run only
    print(f"trained (training profile {cfg.profile!r}): "
          + ", ".join(f"{k.removeprefix('train_')} ({v:.0f} s)" for k, v in timings.items()))
    return 0


def _book(args: argparse.Namespace) -> int:
    from prrt_utils.report.book import make_book

    index = make_book(_book_config(args), execute=not args.build_only, progress=_progress(args))
    print(f"book built: {index}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prrt",
        description=(
            "Predict progression-free survival after PRRT from PET/CT and laboratory values. "
            "Each subcommand runs one pipeline stage; outputs are cached, so rerunning skips finished work."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, data: bool = True, work: bool = True) -> None:
        if data:
            p.add_argument("--data", default=DEFAULT_DATA, help="raw cohort folder: clinical.csv and imaging/<patient_id>/ (default: %(default)s)")
        if work:
            p.add_argument("--work", default=DEFAULT_WORK, help="folder for every stage's outputs and caches (default: %(default)s)")
        if data and work:
            p.add_argument("--cohort", metavar="COHORT.yaml", default=None, help="run on your own cohort described by this YAML (see book/own_cohort.md); replaces --data")
        p.add_argument("--quiet", action="store_true", help="no progress bars, warnings and errors only")

    p = sub.add_parser("synth", help="write the synthetic digital-twin cohort (DICOM + CSV + ground truth)")
    p.add_argument("--out", default=DEFAULT_DATA, help="output folder (default: %(default)s)")
    p.add_argument("--n", type=int, default=None, help=f"number of patients (default: {_SYNTH.n_patients}, as in the paper; {_SECOND.n_patients} with --second-centre)")
    p.add_argument("--seed", type=int, default=None, help=f"seed; the same seed gives byte-identical files (default: {_SYNTH.seed}; {_SECOND.seed} with --second-centre)")
    p.add_argument("--second-centre", action="store_true", help="an external validation centre: another scanner, other lab assays, another case mix (book/synthetic_cohort.md)")
    p.add_argument("--scenario", choices=SCENARIOS, default=_SYNTH.scenario,
                   help="outcome model: the digital twin (labs and images carry prognosis additively) or the positive "
                        "control (PFS fixed by the tumour burden visible on PET; a pipeline must learn it) (default: %(default)s)")
    p.add_argument("--censor-fraction", type=float, default=_SYNTH.censor_fraction, help="fraction of patients censored administratively (default: %(default)s: every patient progresses, as in the paper)")
    p.add_argument("--clinical-size", action="store_true", help="write clinical matrix sizes (CT 512x512, PET ~200x200) for benchmarks")
    p.add_argument("--format", choices=("dicom", "nifti"), default=_SYNTH.image_format, help="image format of the export (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=_BOOK.n_jobs, help="worker processes; the files do not depend on it (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace a cohort of another configuration in --out (otherwise refused)")
    common(p, data=False, work=False)
    p.set_defaults(func=_synth)

    p = sub.add_parser("cohort", help="validate the clinical table against the imaging folders; write work/cohort/")
    common(p)
    p.add_argument("--threshold", type=float, default=None, help="PFS threshold in months for short vs long PFS (default: the cohort YAML's, else 12)")
    p.add_argument("--on-error", choices=("skip", "stop"), default=_BOOK.on_error, help="skip a bad patient (listed in the exclusion table) or stop at the first problem (default: %(default)s)")
    p.set_defaults(func=_cohort)

    p = sub.add_parser("check", help="validate your own cohort (COHORT.yaml) before any training: one line per patient, usable or not, and why")
    p.add_argument("cohort_yaml", metavar="COHORT.yaml", help="description of the export (see examples/cohort.example.yaml)")
    p.add_argument("--quick", action="store_true", help="DICOM headers only: no voxel is read, slice geometry and coverage are not checked")
    p.add_argument("--jobs", type=int, default=_BOOK.n_jobs, help="parallel worker processes (default: %(default)s)")
    p.add_argument("--work", default=DEFAULT_WORK, help="work folder of the debug log: an unexpected error's scrubbed traceback is appended to WORK/logs/debug.log, as for preprocess; nothing else is written (default: %(default)s)")
    p.set_defaults(func=_check)

    p = sub.add_parser("preprocess", help="load DICOM/NIfTI, convert to SUVbw and HU, resample to 75x50x50; write work/preprocessed/")
    common(p)
    p.add_argument("--on-error", choices=("skip", "stop"), default=_BOOK.on_error, help="skip a bad patient (listed in the exclusion table) or stop at the first problem (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=_BOOK.n_jobs, help="parallel worker processes (default: %(default)s)")
    p.set_defaults(func=_preprocess)

    def profile(p: argparse.ArgumentParser) -> None:
        from prrt_utils.models.training import PROFILES

        p.add_argument("--profile", choices=PROFILES, default=_BOOK.profile,
                       help="training recipe: 'default' (one that learns: AdamW, early stopping inside the training "
                            "part, shifts, PET relative to the liver) or 'paper' (the paper's literal recipe: Adam, "
                            "lr 0.01, L2 decay 0.2, 8 epochs); recorded in each model's train.yaml, and folds of one "
                            "profile are never reused for another (default: %(default)s)")

    def training(p: argparse.ArgumentParser) -> None:
        p.add_argument("--repeats", type=int, default=_BOOK.n_repeats, help="cross-validation repeats (default: %(default)s, as in the paper)")
        p.add_argument("--folds", type=int, default=_BOOK.n_splits, help="folds per repeat (default: %(default)s, as in the paper)")
        p.add_argument("--epochs", type=int, default=_BOOK.epochs, help="training epochs; 0 keeps the training default (default: %(default)s)")
        p.add_argument("--seed", type=int, default=_BOOK.seed, help="seed fixing the synthetic cohort, the splits and every initial weight (default: %(default)s)")
        p.add_argument("--device", default=_BOOK.device, help="'auto' (CUDA when present), 'cpu' or 'cuda' (default: %(default)s)")
        p.add_argument("--jobs", type=int, default=_BOOK.n_jobs, help="worker processes for generation, preprocessing and folds (default: %(default)s)")
        p.add_argument("--scheduler", default="", help="Dask scheduler address (tcp://host:8786): folds run on that cluster instead of local processes")
        p.add_argument("--ct-init", default="", metavar="PATH|none", help="CT branch of the pretrained model: '' = as declared in models/*.yaml (CT pretraining on anatomy first), 'none' = from scratch, or a checkpoint file, e.g. a MONAI CT segmentation bundle's model.pt (default: as declared)")
        p.add_argument("--ct-labels", default="", metavar="DIR", help="label maps <patient_id>.nii.gz of the CT pretraining population (default: the population's own)")
        p.add_argument("--pretrain-data", default="", metavar="DIR", help="CT pretraining population: patients OUTSIDE the study, imaging/<id>/ and ct_labels/<id>.nii.gz with codes.json (default: an independent synthetic population for the synthetic cohort; an own cohort without one trains the CT branch from scratch)")
        profile(p)

    p = sub.add_parser("pretrain-ct", help="pretrain the CT encoder of the pretrained model on anatomy segmentation (no outcome used); write work/pretrained/")
    common(p)
    p.add_argument("--pretrain-data", default="", metavar="DIR", help="the pretraining population: patients OUTSIDE the study, imaging/<id>/ and ct_labels/<id>.nii.gz with codes.json (default for the synthetic cohort: an independent synthetic population generated beside it)")
    p.add_argument("--patients", type=int, default=_BOOK.pretrain_patients, help="size of the independent synthetic population; 0 keeps the default (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=_BOOK.n_jobs, help="worker processes generating and preprocessing the population (default: %(default)s)")
    p.add_argument("--labels", default="", metavar="DIR", help="label maps <patient_id>.nii.gz of the pretraining population (e.g. TotalSegmentator outputs; default: the population's own)")
    p.add_argument("--epochs", type=int, default=_BOOK.epochs, help="epochs; 0 keeps the default (default: %(default)s)")
    p.add_argument("--seed", type=int, default=_BOOK.seed, help="seed of the held-out split and the weights (default: %(default)s)")
    p.add_argument("--device", default=_BOOK.device, help="'auto', 'cpu' or 'cuda' (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="train again even if a checkpoint with the same data and settings exists")
    p.set_defaults(func=_pretrain_ct)

    p = sub.add_parser("train-final", help="fit models on the whole development cohort and write model packages (after `prrt run`)")
    p.add_argument("--work", default=DEFAULT_WORK, help="work folder of the development cohort, with finished cross-validation (default: %(default)s)")
    p.add_argument("--models", nargs="+", default=["pet_fusion"], help="model keys (default: %(default)s)")
    p.add_argument("--out", default="packages", help="folder for the packages, one sub-folder per model (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=_BOOK.epochs, help="training epochs; 0 keeps the training default (default: %(default)s)")
    p.add_argument("--seed", type=int, default=_BOOK.seed, help="global seed (default: %(default)s)")
    p.add_argument("--device", default=_BOOK.device, help="'auto', 'cpu' or 'cuda' (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace an existing package")
    profile(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars (they are shown only on a terminal anyway)")
    p.set_defaults(func=_train_final)

    p = sub.add_parser("validate", help="apply a model package to another cohort, no retraining: discrimination, calibration, decision curve, KM, shift (HTML)")
    p.add_argument("--model", required=True, metavar="PACKAGE", help="model package folder (prrt train-final)")
    common(p)
    p.add_argument("--jobs", type=int, default=_BOOK.n_jobs, help="parallel worker processes for preprocessing (default: %(default)s)")
    p.add_argument("--out", default="validation.html", help="HTML report to write (default: %(default)s)")
    p.set_defaults(func=_validate)

    p = sub.add_parser("predict", help="one new patient through a model package: a one-page HTML report that opens offline")
    p.add_argument("--model", required=True, metavar="PACKAGE", help="model package folder (prrt train-final)")
    p.add_argument("--patient", required=True, metavar="DIR", help="the patient's PET/CT folder (DICOM in any sub-folders, or pet.nii.gz + pet.json + ct.nii.gz)")
    p.add_argument("--labs", required=True, help="laboratory values before PRRT, 'ast_u_l=38,alt_u_l=27,cga_ug_l=142,ggt_u_l=56' (U/l, ug/l), or a JSON file with that mapping")
    p.add_argument("--out", default="report.html", help="HTML report to write (default: %(default)s)")
    p.set_defaults(func=_predict)

    p = sub.add_parser("run", help="train and evaluate models under repeated stratified cross-validation (one papermill page per model)")
    common(p)
    p.add_argument("--models", nargs="+", default=None, help="model keys to run, e.g. pet_fusion (default: the paper's seven, models/*.yaml)")
    training(p)
    p.set_defaults(func=_run)

    p = sub.add_parser("book", help="the main job: generate the synthetic cohort if needed, execute every notebook with papermill in order, build the HTML book")
    common(p)
    training(p)
    p.add_argument("--build-only", action="store_true", help="only rebuild the HTML from the notebooks already executed in book/executed/")
    p.set_defaults(func=_book)
    for p in sub.choices.values():
        p.add_argument("-v", "--verbose", action="count", default=0,
                       help="also debug messages (each patient's reason, scrubbed tracebacks)")
        if not any("--quiet" in a.option_strings for a in p._actions):
            p.add_argument("--quiet", action="store_true", help="warnings and errors only")
    return parser


def _explained(exc: BaseException) -> bool:
    """Errors whose message says what to change (a cohort YAML, table, model, checkpoint, patient)."""
    from prrt_utils.data.cohort import CohortError
    from prrt_utils.data.cohort_source import IntakeError
    from prrt_utils.data.preprocess import PreprocessError
    from prrt_utils.io.images import InputError
    from prrt_utils.models.networks import ModelError
    from prrt_utils.models.package import PackageError
    from prrt_utils.models.pretrain import PretrainError

    return isinstance(
        exc, IntakeError | ModelError | PretrainError | PackageError | CohortError | PreprocessError | InputError
    )


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; 0 on success, 1 when nothing was usable, 2 for an explained error, 3 for an unexpected one.

    An unexpected error is reported in one scrubbed line (no path, no quoted
    value) and its traceback, scrubbed the same way, is appended to
    ``WORK/logs/debug.log`` (:func:`prrt_utils.io.log.write_debug`).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    log = configure(verbosity=args.verbose, quiet=bool(getattr(args, "quiet", False)))
    try:
        return args.func(args)
    except Exception as exc:
        if _explained(exc):
            print(f"prrt {args.command}: {exc}", file=sys.stderr)
            return 2
        hide = [getattr(args, k) for k in ("data", "cohort", "cohort_yaml", "patient") if getattr(args, k, None)]
        where = ""
        if getattr(args, "work", None):
            path = write_debug(args.work, f"prrt {args.command}", exc, hide)
            where = f"; the traceback is in {path}"
        log.error(f"prrt {args.command}: unexpected {type(exc).__name__}: {scrub(str(exc), hide)}{where}")
        log.debug(scrub(traceback.format_exc(), hide))
        return 3


if __name__ == "__main__":
    sys.exit(main())
