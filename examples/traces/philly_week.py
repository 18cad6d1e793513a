"""Cut a week out of the public Philly trace, as Kaon's scheduler benchmarks do.

    curl -LO https://raw.githubusercontent.com/petuum/adaptdl/osdi21-artifact/simulator/traces/philly.csv
    python examples/traces/philly_week.py philly.csv 2017-10-09 > philly_week_2017-10-09.csv

Keeps the jobs submitted in the seven days from the given date that ran at least 60 s and
used under 1,000 GPU-hours, in submit order (jobs submitted in the same second keep the
file's order), with the columns `kaon sim` reads. `--limit N` keeps only the first N: the
sample beside this script is `philly.csv 2017-11-06 --limit 400`.
"""

import argparse
import csv
import sys
from datetime import date, timedelta

COLUMNS = ["timestamp", "duration", "num_gpus", "gpu_time", "cluster"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", help="philly.csv from the Pollux artifact")
    parser.add_argument("start", type=date.fromisoformat, help="first day, YYYY-mm-dd")
    parser.add_argument("--limit", type=int, help="keep only the first N jobs")
    args = parser.parse_args()

    # Timestamps are "YYYY-mm-dd HH:MM:SS", so comparing them as text compares times.
    first, end = str(args.start), str(args.start + timedelta(days=7))
    with open(args.trace, newline="", encoding="utf-8") as handle:
        rows = [
            row
            for row in csv.DictReader(handle)
            if first <= row["timestamp"] < end
            and float(row["duration"]) >= 60
            and float(row["gpu_time"]) < 1000 * 3600
        ]
    rows.sort(key=lambda row: row["timestamp"])  # stable: ties keep the file's order
    writer = csv.DictWriter(sys.stdout, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows[: args.limit])


if __name__ == "__main__":
    main()
