"""Chapter 13 (APEM on your own model): the ``apem score`` command line, run and read, and the exercises' values.

The page builds its command from its parameters (:func:`score_command`) and runs it in a
scratch folder where the user's module lives (:func:`run_score`), through the command line's
own entry point in the page's process (what ``apem score ...`` in a shell runs, without
starting Python again); the command's table is the runner's results table, read back from
the parquet file it writes.
"""

from __future__ import annotations

import io
import json
import os
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pandas as pd

from apem import claims
from apem.book.exercises import counts_sentence, means_sentence


def score_command(cfg, methods: dict, n: int, out: Path) -> list[str]:
    """The arguments of ``apem score`` for ``methods`` (name -> parameters) on ``n`` correct images of ``cfg``'s draw.

    The model, preprocessing, search, seed and pool are ``cfg``'s, so the draw is the configuration's.
    """
    cmd = ["score", "--model", cfg.model, "--weights", cfg.weights, "--preset", cfg.preset]
    for m in methods:
        cmd += ["--method", m]
    cmd += ["-n", str(n), "-p", "methods", json.dumps(methods), "-p", "search_mode", cfg.search_mode,
            "-p", "search_bound", str(cfg.search_bound), "-p", "seed", str(cfg.seed), "-p", "pool", json.dumps(cfg.pool)]
    if cfg.data is not None:
        cmd += ["--data", str(cfg.data)]
    return cmd + ["--no-progress", "--out", str(out)]


def shown(command: list[str]) -> str:
    """The command as a reader types it: ``$ apem score ...`` with its JSON quoted, without ``--out``."""
    args = command[: command.index("--out")] if "--out" in command else command
    return "$ apem " + " ".join(f"'{a}'" if a.startswith("{") else a for a in args)


def run_score(command: list[str], workdir: Path) -> tuple[str, pd.DataFrame]:
    """Run ``apem`` with ``command`` in ``workdir`` (where the user's ``module:function`` lives), in this process.

    Returns its printed table (the store's path left out) and the per-(image, method) table it wrote.
    """
    from apem.cli import main

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    sys.path.insert(0, str(workdir))
    try:
        os.chdir(workdir)
        with redirect_stdout(out), redirect_stderr(err):
            rc = main(command)
    finally:
        os.chdir(here)
        sys.path.remove(str(workdir))
    if rc:
        raise RuntimeError(f"apem score failed: {err.getvalue().strip()[-800:]}")
    printed = out.getvalue().split("\n\n", 1)[-1].replace(str(workdir) + os.sep, "")
    return printed, pd.read_parquet(Path(workdir) / command[command.index("--out") + 1])


def setting(cfg, n: int, method: str, prior: str, prior_width: float) -> str:
    return (f"**Setting.** {cfg.model} ({cfg.preset} preprocessing, weights {cfg.weights}) on {n} correctly "
            f"classified images, drawn as the `{cfg.name}` configuration draws them (its pool and seed); methods "
            f"`{method}` and `{prior}` (width {prior_width}), maps by the thesis's visualisation stage 3; apem's "
            f"`{cfg.search_mode}` search with bound {cfg.search_bound:,}.")


def exercise_values(T: pd.DataFrame, verdicts: claims.Claims, seed: int = 0) -> dict[str, str]:
    """The numbers the exercises' solutions quote (names ``ex13_...``): the mean APEM per method as censoring
    leaves it, the number of images, and the paired claim's smallest possible p and verdict (the last claim)."""
    paired = verdicts.claims[-1]
    return {"ex13_means": means_sentence(T, seed), "ex13_n": str(T.image_id.nunique()),
            "ex13_p_min": f"{paired.evidence.p_min:.4g}",
            "ex13_verdict": paired.verdict, "ex13_verdicts": counts_sentence(verdicts.counts())}
