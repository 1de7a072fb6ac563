"""Which model to take at a size? ``pick --max-params``'s rule against the most accurate one, on finished searches.

    python benchmarks/pick_rule.py runs/fq0.json runs/fq1.json ...    # JSON files written by front_quality.py

Reads, for each JSON summary of ``benchmarks/front_quality.py``, the dense reference's test accuracy and the
search's run directory (``run_dir`` in the summary, else the JSON's path without ``.json``), and for each size
bucket (at most 2%, 5% and 10% of the dense parameters) compares two choices among the search's finished trials
that fit, by their test accuracy (which neither rule sees):

- *most accurate*: the best validation accuracy (the smaller on a tie), ``pick --max-params N --most-accurate``;
- *pick*: the largest model whose validation accuracy is within one standard error of the most accurate one's,
  ``pick --max-params N`` (``autoprune.searching.pareto.pick_max_params``).

Prints one line per search and bucket, the test drop from the dense model under each rule, and per bucket how
often the pick tested better, worse or the same (the same model, or another of equal test accuracy), with the
mean change. Nothing is trained.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BUCKETS = (0.02, 0.05, 0.10)


def val_samples(record: dict) -> int:
    """The validation split's size: recorded since records hold it, else from the dataset settings."""
    if record.get("val_samples"):
        return int(record["val_samples"])
    ds = record["config"]["dataset"]
    train = ds.get("limit") or {"fashion-mnist": 60_000}[ds["name"]]
    return int(train * ds["val_fraction"])


def main(argv: list[str] | None = None) -> int:
    from autoprune.rundir.ledger import load_results
    from autoprune.searching.pareto import pick_max_params

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("summaries", nargs="+", help="JSON files written by front_quality.py --json")
    args = parser.parse_args(argv)
    changes: dict[float, list[float]] = {b: [] for b in BUCKETS}
    for path in args.summaries:
        summary = json.loads(Path(path).read_text())
        run_dir = Path(summary.get("run_dir") or str(path).removesuffix(".json"))
        dense = summary["dense"]
        trials = [{**r, "val_samples": val_samples(r)} for r in load_results(run_dir).trials]
        what = " ".join([summary["space"], *summary.get("overrides", [])])
        cells = []
        for b in BUCKETS:
            limit = int(b * dense["params_total"])
            if not any(r["params_nonzero"] <= limit for r in trials):
                continue
            best = pick_max_params(trials, limit, most_accurate=True)
            chosen = pick_max_params(trials, limit)
            drop = [100 * (r["test_accuracy"] - dense["test_accuracy"]) for r in (best, chosen)]
            changes[b].append(drop[1] - drop[0])
            cells.append(
                f"{100 * b:g}%: {drop[0]:+.2f} -> {drop[1]:+.2f} pt ({best['params_nonzero']} -> "
                f"{chosen['params_nonzero']} params)"
            )
        print(f"{run_dir.name} ({what}, n_val {trials[0]['val_samples']}): " + "; ".join(cells), flush=True)
    print("test drop from dense: most accurate -> pick; per bucket:")
    for b, diffs in changes.items():
        if diffs:
            better, worse = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
            print(
                f"  <= {100 * b:g}%: pick better in {better}, worse in {worse}, no change in "
                f"{len(diffs) - better - worse} of {len(diffs)} searches; mean change {sum(diffs) / len(diffs):+.3f} pt"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
