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
    for policy in ("kaon", "fifo", "easy", "las", "gittins", "srtf", "kueue", "kueue-fair", "kai"):
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


def test_plot_is_written_and_its_path_printed(tmp_path: Path) -> None:
    """The folder is made if need be; the path goes to stderr, so --json stays JSON."""
    out = tmp_path / "plots" / "plot.png"
    args = ["sim", "--trace", str(_trace(tmp_path, ROWS)), "--nodes", "2", "--plot", str(out)]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert result.stderr.strip() == f"plot: {out.resolve()}"
    assert json.loads(result.stdout)["jobs"] == 4


def test_plot_folder_that_cannot_be_made_fails_before_the_replay(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "plot.png"
    result = CliRunner().invoke(
        app, ["sim", "--trace", str(_trace(tmp_path, ROWS)), "--plot", str(out)]
    )
    assert result.exit_code == 2
    assert "--plot: cannot make the folder" in result.output and "Traceback" not in result.output


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


def _sim_json(trace: Path, *extra: str) -> dict[str, object]:
    args = ["sim", "--trace", str(trace), "--nodes", "1", "--gpus-per-node", "8", "--json"]
    result = CliRunner().invoke(app, [*args, *extra])
    assert result.exit_code == 0, result.output
    summary: dict[str, object] = json.loads(result.output)
    return summary


def test_quotas_reclaim_and_no_quotas_share_one_queue(tmp_path: Path) -> None:
    """b's share is 4.8 GPUs (6,000 of 10,000 GPU-seconds): with quotas its 2-GPU job takes
    back the node a borrows whole; as one shared queue it waits for a's job to end."""
    trace = _trace(
        tmp_path,
        ["2017-10-09 00:00:00,500,8,4000,a\n", "2017-10-09 00:00:10,3000,2,6000,b\n"],
    )
    shared = _sim_json(trace, "--no-quotas")
    quotas = _sim_json(trace)
    assert (quotas["quotas"], shared["quotas"]) == (True, False)
    assert quotas["preemptions"] == 1 and quotas["quota_guarantee"] == 1.0
    assert shared["preemptions"] == 0 and shared["quota_guarantee"] < 0.5  # type: ignore[operator]
    waits = quotas["tenant_avg_queue_delay_s"], shared["tenant_avg_queue_delay_s"]
    assert waits[0]["b"] == 0.0 and waits[1]["b"] == 490.0  # type: ignore[index]
