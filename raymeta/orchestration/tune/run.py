"""``raymeta tune``: a Ray Tune population fine-tunes one new task from the meta-init and priors.

The request is a ``TuneRequest`` (``request.py``: sizes, strategy, resources). Population =
``trials`` Tune trials x ``members_per_trial`` packed members (``trainable.py`` for the exact
in-trial semantics and the budget cap). Trial configs come from the prior: the portfolio first
(``points_to_evaluate`` on the basic variant generator, since PBT/PB2 refuse searchers), then
prior samples. PBT explores with the prior's ``hyperparam_mutations``; PB2 within the prior's
continuous bounds; ASHA stops bad trials early; ``random`` runs every trial to the end (FIFO); a
scheduler object given from Python is used as it is. The test split is evaluated once, at the
end, for the best snapshot of any member.

Outputs in ``out``: ``best_model.pt`` (weights only), ``report.json`` and result rows under
``results/`` (``raymeta.results`` schema), all written atomically after the run; ``run.json``
pins the settings so a rerun with the same ``out`` resumes (``Tuner.restore``) instead of
starting over, and a rerun with different settings is refused. Ray unpickles the experiment
directory on restore, so raymeta signs it as it is written and verifies it first (``_trust``).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from raymeta.core.train import derive_seed
from raymeta.errors import ConfigError, RaymetaError
from raymeta.fileio import atomic_write_bytes, atomic_write_json
from raymeta.finetune.curves import final_rows, val_rows
from raymeta.finetune.hparams import fixed_names, tune_columns
from raymeta.finetune.population import Population
from raymeta.lock import output_lock
from raymeta.orchestration.tune.final import tune_pick
from raymeta.orchestration.tune.lineage import (
    lineage,
    member_events,
    pbt_global,
    population_curve,
    read_histories,
)
from raymeta.orchestration.tune.plan import TunePlan, plan_tune
from raymeta.orchestration.tune.request import TuneRequest, check_members_fit
from raymeta.orchestration.tune.trainable import TRIAL_STEPS, load_trial, tune_trainable
from raymeta.orchestration.tune.trust import (
    TRUST_DIR,
    TUNER_PKL,
    StateSigner,
    Store,
    load_key,
    run_digest,
)
from raymeta.priors import Float
from raymeta.results.sink import ResultSink

RUN_FILE = "run.json"
REPORT_FILE = "report.json"
MODEL_FILE = "best_model.pt"
HISTORY_FILE = "history.jsonl"


def _quiet_env(verbose: int) -> None:
    """Short progress output: no snapshot/metrics-file warnings, no logger chatter, and PBT's
    per-exploit INFO lines only at ``verbose >= 2`` (the lineage is in report.json). Tune's
    automatic loggers stay off: ``_tuner`` gives its own (``_history.logger_callbacks``)."""
    import logging

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # "Remote file not found: .../result.json" when a trial restarts before its log was synced
    logging.getLogger("ray.tune.logger").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if verbose < 2:
        logging.getLogger("ray.tune.schedulers.pbt").setLevel(logging.WARNING)


class _SeededDecisions:
    """Mixin for Ray's PBT and PB2: seeded exploit/explore draws, no perturbation at the end.

    Ray's PBT draws its clone sources and perturbations from Python's global ``random`` (and a
    resample of a Tune domain, like PB2's acquisition restarts, from numpy's global RNG), never
    seeded. Here those draws come from states of the scheduler's own, seeded from the run seed
    and swapped in around each decision and out again, so nothing else in the driver that draws
    from those modules shifts them (and they shift nothing else). With ``synch=True`` every
    decision of a round is taken once all trials have reported it, in a fixed order (PBT:
    upper quantile, middle, lower quantile; ties by trial order), so the whole run is a
    function of the seed; asynchronous decisions depend on which trial reports first.

    A trial's last report (its own clock at ``steps_per_member``) is never perturbed: an
    exploit there would restart the trial only to end it with nothing left to train (and, in
    synchronous mode, every trial would pause and restart once more at the end)."""

    _raymeta_steps: int
    _raymeta_rng: tuple[Any, Any]

    def _raymeta_seed(self, seed: int, steps_per_member: int) -> None:
        import random

        import numpy as np

        self._raymeta_steps = steps_per_member
        self._raymeta_rng = (
            random.Random(derive_seed(seed, 0, 17)).getstate(),
            np.random.RandomState(derive_seed(seed, 0, 19) % 2**32).get_state(),
        )

    @contextmanager
    def _raymeta_own_rng(self) -> Iterator[None]:
        import random

        import numpy as np

        saved = random.getstate(), np.random.get_state()
        random.setstate(self._raymeta_rng[0])
        np.random.set_state(self._raymeta_rng[1])
        try:
            yield
        finally:
            self._raymeta_rng = random.getstate(), np.random.get_state()
            random.setstate(saved[0])
            np.random.set_state(saved[1])

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        with self._raymeta_own_rng():
            super().on_trial_add(tune_controller, trial)  # type: ignore[misc]

    def _exploit(self, tune_controller: Any, trial: Any, trial_to_clone: Any) -> None:
        # the exploited trial keeps its own clock (trainable.py, "the budget is a cap"), not the
        # one in the cloned config. ``TrialClock`` restores it after an asynchronous exploit
        # (the reporting trial's own), but a synchronous round exploits trials that reported
        # earlier, and the clone's clock may not even be updated yet
        last = self._trial_state[trial].last_result or {}  # type: ignore[attr-defined]
        own = last.get("trial_step")
        super()._exploit(tune_controller, trial, trial_to_clone)  # type: ignore[misc]
        if own is not None:
            trial.set_config({**trial.config, TRIAL_STEPS: int(own)})

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        step = result.get("trial_step")
        if step is not None and trial.config.get(TRIAL_STEPS) != step:
            # what ``TrialClock`` does after the scheduler, now: a synchronous round may clone
            # this trial's config (and log it to pbt_global.txt) before the callback runs
            trial.set_config({**trial.config, TRIAL_STEPS: int(step)})
        if int(step or 0) >= self._raymeta_steps:
            return "CONTINUE"  # TrialScheduler.CONTINUE: the trial ends by itself
        with self._raymeta_own_rng():
            return str(super().on_trial_result(tune_controller, trial, result))  # type: ignore[misc]


def make_scheduler(plan: TunePlan) -> Any:
    """The request's Ray Tune scheduler: its own object, or the one its name stands for.

    PBT and PB2 draw from RNGs seeded by the run seed (``_SeededDecisions``) and, with
    ``deterministic``, take their decisions synchronously, so a rerun repeats the run exactly;
    ASHA is made reproducible by running one trial at a time (``_tuner``); ``random`` (FIFO)
    needs nothing: its trials never interact. A scheduler object given from Python is used as
    it is."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    from raymeta.orchestration.tune.space import clip_explore, hyperparam_mutations

    req = plan.request
    name = req.scheduler
    if not isinstance(name, str):
        return name
    # asynchronous (the default): only exploited trials restart; synchronous PBT pauses (and,
    # with a function trainable, restarts) every trial at every round
    synch = bool(req.deterministic)
    if name == "pbt":

        class _PBT(_SeededDecisions, PopulationBasedTraining):  # type: ignore[misc]
            pass

        pbt = _PBT(
            time_attr="training_iteration",
            perturbation_interval=1,
            hyperparam_mutations=hyperparam_mutations(plan.prior, exclude=fixed_names()),
            custom_explore_fn=clip_explore(plan.prior),
            quantile_fraction=0.25,
            resample_probability=0.25,
            synch=synch,
        )
        pbt._raymeta_seed(plan.seed, plan.setup.steps_per_member)
        return pbt
    if name == "pb2":
        from ray.tune.schedulers.pb2 import PB2

        class _PB2(_SeededDecisions, PB2):  # type: ignore[misc]
            def _get_new_config(self, trial: Any, trial_to_clone: Any) -> Any:
                # the GP's data in a fixed order (time, then trial), not the order reports came in
                if len(self.data):
                    self.data = self.data.sort_values(["Time", "Trial"], kind="stable")
                    self.data = self.data.reset_index(drop=True)
                return super()._get_new_config(trial, trial_to_clone)

        bounds: dict[str, Any] = {
            p.name: [p.low, p.high]
            for p in plan.prior.space
            if isinstance(p, Float) and p.name not in fixed_names()
        }
        pb2 = _PB2(
            time_attr="training_iteration",
            perturbation_interval=1,
            hyperparam_bounds=bounds,
            quantile_fraction=0.25,
            synch=synch,
        )
        pb2._raymeta_seed(plan.seed, plan.setup.steps_per_member)
        return pb2
    if name == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=plan.n_intervals,
            grace_period=max(1, plan.n_intervals // 4),
            reduction_factor=2,
        )
    return FIFOScheduler()


def _search_alg(
    points: list[dict[str, Any]], seed: int, signer: StateSigner, max_concurrent: int = 0
) -> Any:
    """The basic variant generator, but "finished" only once every trial it made has completed,
    and signing each experiment snapshot (``_trust``) right after Tune wrote it; at most
    ``max_concurrent`` trials live at once (0: no limit; Tune ignores ``max_concurrent_trials``
    for a generator given as the search algorithm).

    Why "finished" late: Tune caches a paused trial's actor for reuse only while the search is
    unfinished or a trial is staged. A plain generator is finished as soon as it has emitted
    the population, so every PBT exploit (pause + restore of a function trainable) would kill
    the actor and start a new process (Ray worker, torch import, first vmapped call: seconds
    each time). Keeping it "unfinished" while trials are live lets the exploited trial restart
    in the same process.

    Why sign here: Tune's snapshot writes the experiment state, then calls this
    ``save_to_dir`` with its staging directory, and uploads that directory to the experiment
    directory only afterwards, so every file is signed before it can appear there."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    class _KeepActors(BasicVariantGenerator):  # type: ignore[misc]
        raymeta_signer: StateSigner

        def is_finished(self) -> bool:
            return bool(super().is_finished()) and not self._live_trials

        def save_to_dir(self, dirpath: Any, session_str: Any) -> Any:  # type: ignore[override]
            saved = super().save_to_dir(dirpath, session_str)
            self.raymeta_signer.sign_snapshot(dirpath)
            return saved

    alg = _KeepActors(points_to_evaluate=points, random_state=seed, max_concurrent=max_concurrent)
    alg.raymeta_signer = signer
    return alg


def _experiment(out: Path, storage: str | None, name: str | None = None) -> tuple[str, str]:
    """(storage path, experiment name): the request's ``name``, else deterministic in ``out``,
    so a rerun finds the run (a rerun under another name is refused by ``run.json``: the name
    is part of the fingerprint)."""
    if name is None:
        name = "tune-" + hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:12]
    if not storage:
        return str((out / "ray_results").resolve()), name
    if "://" not in storage:  # Ray Tune reads a relative path as a URI (ArrowInvalid, mid-run)
        storage = str(Path(storage).expanduser().absolute())
    return storage, name


def _read_run_file(p: Path, out: Path) -> dict[str, Any]:
    """``run.json`` as ``_check_run_file`` needs it: a mapping with a ``fingerprint`` mapping
    and a numeric ``started``; anything else (a truncated or edited file) is one line."""
    try:
        rec = json.loads(p.read_text())
    except (OSError, ValueError):
        rec = None
    fp = rec.get("fingerprint") if isinstance(rec, dict) else None
    started = rec.get("started") if isinstance(rec, dict) else None
    if (
        not isinstance(fp, dict)
        or isinstance(started, bool)
        or not isinstance(started, (int, float))
        or not math.isfinite(started)
    ):
        raise ConfigError(
            f"{p} is unreadable or not a raymeta tune run record; remove {out} or pick another --out"
        )
    return rec  # type: ignore[return-value]


def check_run_record(out: Path, fp: dict[str, Any]) -> dict[str, Any] | None:
    """The run record of ``out`` when it holds the run ``fp`` pins (a resume), None when
    ``out`` is new or empty; another run, or a folder that is no tune run, is a one-line
    ``ConfigError``. Reads only: ``raymeta quickstart`` checks its runs with it before Ray."""
    p = out / RUN_FILE
    if p.is_file():
        rec = _read_run_file(p, out)
        if rec.get("fingerprint") != fp:
            old = rec.get("fingerprint", {})
            diff = sorted(k for k in set(fp) | set(old) if old.get(k) != fp.get(k))
            raise ConfigError(
                f"--out {out} holds a different tune run (differs in {', '.join(diff)}); pick another --out"
            )
        return dict(rec)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(
            f"--out {out} exists and is not a raymeta tune run directory; pick another --out"
        )
    return None


def _check_run_entries(out: Path, label: str) -> None:
    """What a resumed run will write over must be writable as it is: its files regular files
    and ``results`` a results dataset (an edited folder was an error only after the run)."""
    for name in (HISTORY_FILE, REPORT_FILE, MODEL_FILE):
        p = out / name
        if (p.exists() or p.is_symlink()) and (p.is_symlink() or not p.is_file()):
            raise ConfigError(
                f"{p} is not a regular file (not a raymeta tune run?); remove {out} or pick another --out"
            )
    ResultSink(out / "results", label).done_keys()  # the marker and part footers; writes nothing


def _check_run_file(out: Path, plan: TunePlan, write: bool = True) -> dict[str, Any]:
    """Refuse to mix two different runs in one ``out``; returns the pinned run record (written
    for a new run unless ``write`` is false: the check alone, before any work)."""
    fp = plan.fingerprint()
    rec = check_run_record(out, fp)
    if rec is not None:
        return rec
    rec = {"fingerprint": fp, "started": time.time()}
    if write:
        atomic_write_json(out / RUN_FILE, rec)
    return rec


def _tuner(
    plan: TunePlan,
    out: Path,
    storage_path: str,
    name: str,
    verbose: int,
    signer: StateSigner,
    resume: bool,
) -> Any:
    """A new ``Tuner``, or the restored one when ``resume`` (``_trusted_resume`` verified the
    experiment directory first)."""
    from ray import tune
    from ray.tune import CLIReporter

    from raymeta.orchestration.tune._history import (
        HistoryCallback,
        ProgressCallback,
        TrialClock,
        logger_callbacks,
    )
    from raymeta.orchestration.tune.space import param_space, points_to_evaluate

    req = plan.request
    trainable = tune.with_resources(
        tune.with_parameters(tune_trainable, setup=plan.setup),
        {"cpu": req.cpus_per_trial, "gpu": req.gpus_per_trial},
    )
    space = param_space(plan.prior)
    exp_path = f"{storage_path.rstrip('/')}/{name}"
    if resume:
        return tune.Tuner.restore(
            exp_path,
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
            param_space=space,
        )
    reporter = CLIReporter(
        metric_columns={"val_loss": "val", "best_val_loss": "best", "trial_step": "step"},
        parameter_columns=tune_columns(),
        max_progress_rows=8,
        max_report_frequency=30,
        sort_by_metric=True,
    )
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric="val_loss",
            mode="min",
            scheduler=make_scheduler(plan),
            num_samples=req.trials,
            # ASHA's stops depend on which trials reached a rung first: one trial at a time
            # fixes that order (the generator's), at the cost of running no two in parallel
            search_alg=_search_alg(
                points_to_evaluate(plan.initial),
                plan.seed,
                signer,
                max_concurrent=1 if req.deterministic and req.scheduler == "asha" else 0,
            ),
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=tune.FailureConfig(max_failures=req.max_failures),
            # every checkpoint is kept (a handful per trial at the default interval): after a PBT
            # exploit a trial's latest checkpoint is the *source* trial's, which a num_to_keep
            # limit on the source may delete, and a retried or resumed trial could then not start
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            # Tune's own table only at verbose >= 2: at 1 the progress line (``run_tune``)
            verbose=verbose if verbose >= 2 else 0,
            progress_reporter=reporter,
            callbacks=[
                HistoryCallback(str((out / HISTORY_FILE).resolve())),
                TrialClock(TRIAL_STEPS),
                ProgressCallback(req.total_budget),
                *logger_callbacks(),
            ],
        ),
    )
    signer.sign_initial()
    return tuner


def _trusted_resume(signer: StateSigner, history: Path) -> bool:
    """Verify the experiment directory (refusing what raymeta did not sign for this run); True
    when it holds a run to resume, whose history is then cut to what the restored state knows.

    Why cut: reports a killed driver logged after its last signed snapshot belong to a timeline
    the resume abandons (PBT decisions differ from there on); kept, they shift later rows."""
    from raymeta.orchestration.tune._history import last_reports, truncate_history

    store = Store(signer.experiment)
    signer.verify(store)
    states = [r for r in store.files() if "/" not in r and r.startswith("experiment_state-")]
    if store.read(TUNER_PKL) is None or not states:
        # no snapshot yet (killed before the first one): nothing to resume, start over
        truncate_history(history, {})
        return False
    truncate_history(history, last_reports(store.read(max(states)) or b"{}"))
    return True


def _select_best(plan: TunePlan, results: list[Any]) -> tuple[Any, Population]:
    """(result, population) holding the lowest best-snapshot validation loss among every
    retained checkpoint of every trial."""
    inf = float("inf")
    scored = []
    for r in results:
        cks = [(float(mt.get("best_val_loss", inf)), c) for c, mt in (r.best_checkpoints or [])]
        if r.checkpoint is not None:
            cks.append((float(r.metrics.get("best_val_loss", inf)), r.checkpoint))
        tid = str(r.metrics.get("trial_id", ""))
        scored += [(v, tid, i, r, c) for i, (v, c) in enumerate(cks)]
    if not scored:
        errs = [str(r.error).strip().splitlines()[-1] for r in results if r.error is not None]
        raise RaymetaError(
            f"no trial produced a checkpoint ({len(errs)} failed{': ' + errs[0] if errs else ''})"
        )
    # an exploit copies a snapshot, so exact ties are common: the trial id breaks them, so a
    # restored run (whose results may come back in another order) picks the same member
    _, _, _, r, c = min(scored, key=lambda t: (t[0], t[1], t[2]))
    with c.as_directory() as d:
        pop, _ = load_trial(Path(d), plan.setup)
    return r, pop


def run_tune(
    request: TuneRequest | None = None,
    *,
    verbose: int = 1,
    _crash_marker: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Tune one task; returns the report (also written to ``out/report.json``).

    ``request`` is a ``TuneRequest``; or give its fields as keywords (``run_tune(meta=...,
    task=..., trials=4, out=...)``). ``verbose``: 0 quiet, 1 a progress line on stderr
    (member-steps of the budget, best val loss), 2 also Tune's progress table and PBT's
    per-exploit lines. ``name`` (a ``TuneRequest`` field) names the Tune experiment
    (``storage/NAME``) and the result rows."""
    if request is None:
        request = TuneRequest.from_kwargs(**fields)
    elif fields:
        raise ConfigError(f"give a TuneRequest or keywords, not both ({', '.join(fields)})")
    request.check_paths()
    with output_lock(request.out):  # one writer per --out: a second run is refused
        return _run(request, verbose, _crash_marker)


def _run(request: TuneRequest, verbose: int, crash_marker: str | None) -> dict[str, Any]:
    from ray import tune  # noqa: F401  (fail early if Tune is missing)

    from raymeta.orchestration.ray_runtime import (
        check_resources,
        check_resources_before_start,
        ray_context,
    )

    out = Path(request.out)
    plan = plan_tune(request, crash_marker)
    request = plan.request  # ``auto`` resolved
    check_members_fit(request.members_per_trial, plan.ckpt)
    if request.scheduler == "pb2" and not any(isinstance(p, Float) for p in plan.prior.space):
        raise ConfigError(
            "--scheduler pb2 needs at least one continuous hyperparameter in the search space"
        )
    _quiet_env(verbose)
    storage_path, name = _experiment(out, request.storage, request.name)
    exp_path = f"{storage_path.rstrip('/')}/{name}"
    signer = StateSigner(
        str(out), str((out / TRUST_DIR).resolve()), exp_path, run_digest(plan.fingerprint())
    )
    _check_run_file(out, plan, write=False)  # another run's --out: its own message, first
    _check_run_entries(out, request.label)
    if not (out / RUN_FILE).is_file() and Store(exp_path).files():
        # a new run (run.json comes before any Tune file) whose experiment exists: another
        # run's --name in a shared --storage
        raise ConfigError(
            f"Ray Tune experiment {exp_path} already exists (another run's); pick another --name"
        )
    # before Ray starts, and so before anything (Tune included) reads a pickle from there
    resume = _trusted_resume(signer, out / HISTORY_FILE)
    load_key()  # a key file that cannot sign is refused here, not once Tune has written state
    check_resources_before_start(
        request.address, request.cpus_per_trial, what="a tune trial", gpus=request.gpus_per_trial
    )
    t0 = time.perf_counter()
    # no idle prestarted workers: Tune's trial actors cannot use them (``local_init_kwargs``)
    with ray_context(request.address, prestart_workers=False):
        check_resources(
            cpus=request.cpus_per_trial, gpus=request.gpus_per_trial, what="a tune trial"
        )
        run = _check_run_file(out, plan)
        tuner = _tuner(plan, out, storage_path, name, verbose, signer, resume)
        with _progress_line(request, verbose):
            grid = tuner.fit()
        results = [grid[i] for i in range(len(grid))]
    return write_outputs(plan, results, out, run, exp_path, time.perf_counter() - t0)


@contextmanager
def _progress_line(request: TuneRequest, verbose: int) -> Iterator[None]:
    """The run's progress line on stderr while Tune runs (``_history.ProgressCallback``)."""
    from raymeta.orchestration.tune._history import ProgressCallback
    from raymeta.progress import Progress

    with Progress("tune: member-steps", request.total_budget, quiet=verbose < 1) as line:
        line.update(0)  # shown (and its clock ticking) while the trials' workers start
        ProgressCallback.line = line
        try:
            yield
        finally:
            ProgressCallback.line = None


def write_outputs(
    plan: TunePlan,
    results: list[Any],
    out: Path,
    run: dict[str, Any],
    exp_path: str,
    wall_s: float,
) -> dict[str, Any]:
    """Test the best snapshot once, then write rows, the best model and the report (atomically)."""
    req = plan.request
    best_r, pop = _select_best(plan, results)
    best = pop.best()
    final = tune_pick(plan, pop, results)
    test = final.test
    hists = read_histories(out / HISTORY_FILE)
    errors = {
        str(r.metrics.get("trial_id")): str(r.error).strip().splitlines()[-1][:300]
        for r in results
        if r.error is not None
    }
    for h in hists:
        h.error = errors.get(h.trial_id)
    started = float(run.get("started", time.time()))
    sink = ResultSink(out / "results", req.label)
    common: dict[str, Any] = {
        "sweep": req.label,
        "strategy": plan.strategy,
        "task": plan.task.task_id,
        "seed": req.seed,
    }
    key = f"{plan.task.task_id}/{plan.strategy}/{req.seed}"
    parts: dict[str, list[dict[str, Any]]] = {}  # one results part file for the whole run
    for h in hists:
        parts[f"{key}/{h.trial_id}"] = [
            row
            for r in h.rows
            for row in val_rows(
                common,
                h.trial_id,
                r["spent"],
                {m: r[m] for m in ("val_loss", "val_accuracy") if m in r},
                r["hparams"],
                max(0.0, r["wall_time"] - started),
            )
        ]
    total = sum(h.rows[-1]["spent"] for h in hists if h.rows) + final.extra_steps
    best_trial = str(best_r.metrics.get("trial_id"))
    trial = f"{best_trial}/m{best.member}"
    parts[f"{key}/final"] = final_rows(common, trial, total, test, best.config, wall_s)
    sink.append_many(parts)
    buf = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in final.params.items()}, buf)
    atomic_write_bytes(out / MODEL_FILE, buf.getvalue())
    model_sha256 = hashlib.sha256(buf.getvalue()).hexdigest()  # raymeta.load_model checks it
    first = [h.rows[0]["val_loss"] for h in hists if h.rows]
    report = {
        "task": plan.task.task_id,
        "task_notes": plan.notes,
        "strategy": plan.strategy,
        "strategy_why": plan.why,
        "pick": {
            "rule": final.rule,
            "members": final.members,
            "extra_steps": final.extra_steps,
            "fallback": final.fallback,
        },
        "settings": plan.fingerprint(),
        "population": req.population,
        "members_per_trial": req.members_per_trial,
        "budget": req.total_budget,
        "steps_per_member": plan.setup.steps_per_member,
        "model": pop.spec.to_dict(),
        "model_sha256": model_sha256,
        "candidate": best.config.get("model", pop.name),
        "kind": plan.task.kind,
        "best": {
            "trial": best_trial,
            "member": best.member,
            "config": best.config,
            "val_loss": best.val_loss,
            **test,
        },
        "initial_best_val_loss": min(first) if first else None,
        "member_steps": total,
        "wall_s": wall_s,
        "lineage": lineage(hists),
        "pbt_global": pbt_global(exp_path),
        "member_exploits": member_events(hists),
        "curve": population_curve(hists),
        "trials": [
            {
                "trial": h.trial_id,
                "reports": len(h.rows),
                "best_val_loss": min((r["best_val_loss"] for r in h.rows), default=None),
                "error": h.error,
            }
            for h in hists
        ],
        "files": {"model": MODEL_FILE, "results": "results", "experiment": exp_path},
    }
    atomic_write_json(out / REPORT_FILE, report)
    return report
