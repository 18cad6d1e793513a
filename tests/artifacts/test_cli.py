"""`kaon artifact` against the real app (SQLite): push, list, get, delete, and the exit
codes of bad input."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from kaon.cli.main import app
from tests.artifacts.test_api import make_folder, tree


class TestArtifactCli:
    def test_push_list_get_delete(self, kaon: CliRunner, tmp_path: Path) -> None:
        src = make_folder(tmp_path / "src")
        pushed = kaon.invoke(app, ["artifact", "push", "digits", str(src), "--kind", "dataset"])
        assert pushed.exit_code == 0, pushed.output
        assert "pushed digits:1 (5 files" in pushed.output
        again = kaon.invoke(app, ["artifact", "push", "digits", str(src), "--json"])
        assert json.loads(again.output)["version"] == 2
        listed = kaon.invoke(app, ["artifact", "list", "--json"])
        rows = json.loads(listed.output)
        assert [(r["name"], r["version"], r["kind"]) for r in rows] == [
            ("digits", 2, "other"),
            ("digits", 1, "dataset"),
        ]
        table = kaon.invoke(app, ["artifact", "list"])
        assert "digits:1" in table.output and "dataset" in table.output
        got = kaon.invoke(app, ["artifact", "get", "digits:1", str(tmp_path / "out")])
        assert got.exit_code == 0, got.output
        assert tree(tmp_path / "out") == tree(src)
        deleted = kaon.invoke(app, ["artifact", "delete", "digits:1"])
        assert deleted.exit_code == 0 and "deleted digits:1" in deleted.output
        assert [
            r["version"]
            for r in json.loads(kaon.invoke(app, ["artifact", "list", "--json"]).output)
        ] == [2]

    def test_bad_input_exit_codes(self, kaon: CliRunner, tmp_path: Path) -> None:
        missing = kaon.invoke(app, ["artifact", "get", "nope:1", str(tmp_path / "o")])
        assert missing.exit_code == 3 and "'nope:1'" in missing.output
        bad = kaon.invoke(app, ["artifact", "delete", "digits"])
        assert bad.exit_code == 2 and "NAME:VERSION" in bad.output
        no_path = kaon.invoke(app, ["artifact", "push", "x", str(tmp_path / "absent")])
        assert no_path.exit_code == 3
        bad_name = kaon.invoke(
            app, ["artifact", "push", "Bad_Name", str(make_folder(tmp_path / "s"))]
        )
        assert bad_name.exit_code == 2 and "name" in bad_name.output
