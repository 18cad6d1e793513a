"""`kaon sim` on small traces: metrics out, and bad input named by file, line and column."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from kaon.cli.main import app

HEADER = "timestamp,duration,num_gpus,gpu_time,cluster\n"
ROWS = [
    "2017-10-09 00:00:00,100,8,800,a\n",
    "2017-10-09 00:00:10,50,4,200,b\n",
    "2017-10-09 00:00:20,30,16,480,a\n",
    "2017-10-09 00:00:30,10,1,10,b\n",
]


def _trace(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(HEADER + "".join(rows))
    return path


def test_every_policy_replays_the_trace(tmp_path: Path) -> None:
    trace = _trace(tmp_path, ROWS)
    for policy in ("kaon", "fifo", "easy", "las", "srtf"):
        result = CliRunner().invoke(
            app,
            [
                "sim",
                "--trace",
                str(trace),
                "--nodes",
                "2",
                "--gpus-per-node",
                "8",
                "--policy",
                policy,
                "--json",
            ],
        )
        assert result.exit_code == 0, result.output
        summary = json.loads(result.output)
        assert summary["jobs"] == 4
        for key in (
            "avg_jct_s",
            "p50_jct_s",
            "p99_jct_s",
            "avg_queue_delay_s",
            "p99_queue_delay_s",
            "makespan_s",
            "gpu_utilization",
            "jain_fairness",
            "quota_guarantee",
            "preemptions",
        ):
            assert key in summary
        assert summary["avg_jct_s"] >= 47.5  # no job finishes faster than it runs


def test_malformed_row_names_file_line_and_column(tmp_path: Path) -> None:
    trace = _trace(tmp_path, [ROWS[0], "2017-10-09 00:00:10,fifty,4,200,b\n"])
    result = CliRunner().invoke(app, ["sim", "--trace", str(trace)])
    assert result.exit_code == 2
    assert "trace.csv:3" in result.output and "duration" in result.output


def test_unknown_policy_lists_the_valid_ones(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["sim", "--trace", str(_trace(tmp_path, ROWS)), "--policy", "best"]
    )
    assert result.exit_code == 2
    assert "kaon" in result.output and "fifo" in result.output


def test_plot_is_written(tmp_path: Path) -> None:
    out = tmp_path / "plot.png"
    result = CliRunner().invoke(
        app, ["sim", "--trace", str(_trace(tmp_path, ROWS)), "--nodes", "2", "--plot", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_sim_runs_inside_any_typer_app(tmp_path: Path) -> None:
    """The command is a plain function: `app.command("sim")(sim)` is all it needs."""
    import typer

    from kaon.cli.sim import sim

    tiny = typer.Typer()
    tiny.command("sim")(sim)
    tiny.command("noop")(lambda: None)
    bad = _trace(tmp_path, [ROWS[0], ROWS[1], "2017-10-09 00:00:10,5,two,10,b\n"])
    result = CliRunner().invoke(tiny, ["sim", "--trace", str(bad)])
    assert result.exit_code == 2
    assert "trace.csv:4: column 'num_gpus'" in result.output
    assert "Traceback" not in result.output
