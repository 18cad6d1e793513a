"""The model registry's rules over the real API, on SQLite and PostgreSQL: versions from a
job (its last metrics, its code) or from an artifact, immutability, aliases, deletes
refused while something uses a version, workspaces apart, bad input answered 4xx naming
the field, and a deployment that follows an alias rolling when the alias moves."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from kaon.core.errors import ConflictError, InvalidSpecError, NotFoundError
from kaon.core.jobs import JobStatus
from kaon.sdk.client import Client
from tests.conftest import RunningServer

PY = sys.executable
SAVES = (
    "import os, kaon\nfrom kaon.report import flush\n"
    "open(os.path.join(os.environ['KAON_CHECKPOINT_DIR'], 'weights.bin'), 'w').write('{w}')\n"
    "kaon.report(step=1, loss=0.5, acc=0.5)\n"
    "kaon.report(step=2, loss=0.25)\n"
    "flush()\n"
)


def trained_job(client: Client, tmp_path: Path, weights: str = "w1") -> str:
    """A job that leaves a checkpoint file and reports metrics, from uploaded code."""
    code = tmp_path / f"code-{weights}"
    code.mkdir()
    (code / "train.py").write_text(SAVES.replace("{w}", weights))
    job = client.jobs.submit([PY, "train.py"], workdir=code, cpu=0.5)
    done = client.jobs.wait(job.id, timeout=120)
    assert done.status is JobStatus.SUCCEEDED, client.jobs.logs(job.id)
    return job.id


def pushed(client: Client, tmp_path: Path, name: str, content: str) -> str:
    folder = tmp_path / f"art-{name}-{content}"
    folder.mkdir()
    (folder / "weights.bin").write_text(content)
    return client.artifacts.push(name, folder, kind="model").ref


def test_register_from_a_job_keeps_its_last_metrics_and_code(
    client: Client, tmp_path: Path
) -> None:
    job_id = trained_job(client, tmp_path)
    v = client.models.register("clf", from_job=job_id, description="a classifier")
    assert (v.model, v.version, v.source_job_id) == ("clf", 1, job_id)
    assert v.metrics == {"loss": 0.25, "acc": 0.5}
    assert v.snapshot is not None and v.snapshot == client.jobs.get(job_id).spec.snapshot
    art = client.artifacts.get(v.artifact)
    assert art.kind == "model" and art.source_job_id == job_id
    assert [f.path for f in art.files or []] == ["weights.bin"]
    shown = client.models.get("clf")
    assert shown.description == "a classifier" and shown.latest_version == 1
    assert [x.version for x in shown.versions] == [1]
    assert [m.name for m in client.models.list()] == ["clf"]


def test_versions_are_immutable_and_aliases_move(
    server: RunningServer, client: Client, tmp_path: Path
) -> None:
    one = client.models.register("m", artifact=pushed(client, tmp_path, "m-w", "a"))
    two = client.models.register("m", artifact=pushed(client, tmp_path, "m-w", "b"), alias="prod")
    assert (one.version, two.version) == (1, 2) and one.artifact != two.artifact
    assert two.aliases == ["prod"]
    path = f"{server.url}/api/v1/workspaces/default/models/m/versions/1"
    headers = {"Authorization": f"Bearer {server.token}"}
    for method in ("PUT", "PATCH"):  # no call changes a version
        assert httpx.request(method, path, json={}, headers=headers).status_code == 405
    view = client.models.set_alias("m", "prod", 1)
    assert view.aliases == {"prod": 1}
    assert [(v.version, v.aliases, v.artifact) for v in view.versions] == [
        (2, [], two.artifact),
        (1, ["prod"], one.artifact),
    ]
    assert client.models.remove_alias("m", "prod").aliases == {}
    actions = [(r.action, r.resource) for r in client.audit.list(workspace="default")]
    for wanted in [
        ("models.register", "models/m"),
        ("models.set_alias", "models/m/prod"),
        ("models.remove_alias", "models/m/prod"),
    ]:
        assert wanted in actions, actions
    with pytest.raises(NotFoundError):
        client.models.remove_alias("m", "prod")


def test_a_version_in_use_is_not_deleted(client: Client, tmp_path: Path) -> None:
    ref = pushed(client, tmp_path, "m-w", "a")
    client.models.register("m", artifact=ref, alias="prod")
    client.models.register("m", artifact=ref)
    with pytest.raises(ConflictError, match="alias 'prod'"):
        client.models.delete("m:1")
    client.deployments.create("pinned", model="m:2", spec={"resources": {"cpu": 0.5}})
    with pytest.raises(ConflictError, match="deployment 'pinned'"):
        client.models.delete("m:2")
    client.deployments.create("follower", model="m:prod", spec={"resources": {"cpu": 0.5}})
    with pytest.raises(ConflictError, match="deployment 'follower'"):
        client.models.remove_alias("m", "prod")
    client.models.register("m", artifact=ref)
    assert client.models.delete("m:3").version == 3
    assert [v.version for v in client.models.get("m").versions] == [2, 1]
    with pytest.raises(NotFoundError):
        client.models.delete("m:3")


def test_moving_an_alias_rolls_the_deployments_that_follow_it(
    client: Client, tmp_path: Path
) -> None:
    ref_a = pushed(client, tmp_path, "m-w", "a")
    ref_b = pushed(client, tmp_path, "m-w", "b")
    client.models.register("m", artifact=ref_a, alias="prod")
    client.models.register("m", artifact=ref_b)
    spec = {"resources": {"cpu": 0.5}}
    follower = client.deployments.create("follower", model="m:prod", spec=spec)
    pinned = client.deployments.create("pinned", model="m:1", spec=spec)
    latest = client.deployments.create("latest", model="m", spec=spec)
    assert latest.spec.model == "m:2"  # a bare name is the newest version, pinned
    assert follower.generation == pinned.generation == 1
    client.models.set_alias("m", "prod", 2)
    after = client.deployments.get("follower")
    assert after.generation == 2 and after.spec.model == "m:prod"
    assert client.deployments.get("pinned").generation == 1
    client.models.set_alias("m", "prod", 2)  # pointing it where it is changes nothing
    assert client.deployments.get("follower").generation == 2


def test_other_workspaces_see_nothing(
    server: RunningServer, client: Client, tmp_path: Path
) -> None:
    client.models.register("m", artifact=pushed(client, tmp_path, "m-w", "a"), alias="prod")
    client.workspaces.create("team-b")
    other = client.tokens.create("b", workspaces=["team-b"]).token
    with server.client(other, workspace="team-b") as b:
        assert b.models.list() == []
        with pytest.raises(NotFoundError):
            b.models.get("m")
        with pytest.raises(NotFoundError):
            b.models.set_alias("m", "prod", 1)
        with pytest.raises(NotFoundError):
            b.models.delete("m:1")
        with pytest.raises(InvalidSpecError) as e:
            b.deployments.create("d", model="m:prod", spec={"resources": {"cpu": 0.5}})
        assert e.value.field == "model"
        with pytest.raises(NotFoundError):  # the default workspace is not theirs
            b.models.get("m", workspace="default")


def test_bad_input_is_a_4xx_naming_the_field(
    server: RunningServer, client: Client, tmp_path: Path
) -> None:
    ref = pushed(client, tmp_path, "m-w", "a")
    client.models.register("m", artifact=ref)
    cases: list[tuple[dict[str, object], str, str | None]] = [
        ({"artifact": "nope:1"}, "m", "artifact"),
        ({"artifact": "Bad Ref"}, "m", "artifact"),
        ({"from_job": "j-000000000000"}, "m", "from_job"),
        ({"artifact": ref, "alias": "1st"}, "m", "alias"),
        ({"artifact": ref}, "Bad_Name", "name"),
    ]
    for body, name, field in cases:
        with pytest.raises(InvalidSpecError) as e:
            client.models.register(name, **body)  # type: ignore[arg-type]
        assert e.value.field == field, (body, name, str(e.value))
    with pytest.raises(InvalidSpecError, match="exactly one of from_job and artifact"):
        client.models.register("m", from_job="j-1", artifact=ref)
    failed = client.jobs.submit([PY, "-c", "raise SystemExit(1)"], cpu=0.5)
    client.jobs.wait(failed.id, timeout=60)
    with pytest.raises(InvalidSpecError, match="succeeded") as e:
        client.models.register("m", from_job=failed.id)
    assert e.value.field == "from_job"
    with pytest.raises(InvalidSpecError) as e:
        client.models.set_alias("m", "Prod!", 1)
    assert e.value.field == "alias"
    with pytest.raises(InvalidSpecError) as e:
        client.models.set_alias("m", "prod", 0)
    assert e.value.field == "version"
    with pytest.raises(NotFoundError):
        client.models.set_alias("m", "prod", 9)
    spec = {"resources": {"cpu": 0.5}}
    for model, message in (("m:9", "no version 9"), ("m:prod", "no alias"), ("x", "not found")):
        with pytest.raises(InvalidSpecError, match=message) as e:
            client.deployments.create("d", model=model, spec=spec)
        assert e.value.field == "model"
    with pytest.raises(InvalidSpecError) as e:
        client.deployments.create("d", model="M:1", spec=spec)
    assert e.value.field == "model"
    with pytest.raises(InvalidSpecError):
        client.deployments.create("d", model="m:1", from_job="j-1", spec=spec)
    answer = httpx.delete(
        f"{server.url}/api/v1/workspaces/default/models/m/versions/one",
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert answer.status_code == 422 and answer.json()["field"] == "path.version"


def test_a_gateway_token_registers_nothing(server: RunningServer, client: Client) -> None:
    from kaon.core.errors import PermissionDeniedError

    gateway = client.tokens.create("gw", role="gateway").token
    with server.client(gateway) as g, pytest.raises(PermissionDeniedError):
        g.models.list()
