"""Server settings, read once from the environment (``KAON_*``) with embedded defaults.

On one machine nothing needs setting: the database is SQLite under ``~/.kaon`` and the
pool is this machine. ``KAON_DATABASE_URL`` points the server at PostgreSQL instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from kaon.core.resources import parse_memory
from kaon.server.security.uids import worker_uids_setting

DEFAULT_PORT = 8470
DEFAULT_GATEWAY_PORT = 8471


def kaon_home() -> Path:
    return Path(os.environ.get("KAON_HOME", Path.home() / ".kaon")).expanduser()


def normalize_database_url(url: str) -> str:
    """Pick the async driver for a plain URL: ``postgresql://`` -> asyncpg, ``sqlite`` ->
    aiosqlite; a bare path means a SQLite file."""
    if "://" not in url:
        return f"sqlite+aiosqlite:///{Path(url).expanduser().resolve()}"
    scheme, rest = url.split("://", 1)
    if scheme in ("postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"):
        return f"postgresql+asyncpg://{rest}"
    if scheme == "sqlite":
        return f"sqlite+aiosqlite://{rest}"
    return url


@dataclass(frozen=True)
class Settings:
    """Everything the server needs to start. Build with `Settings.from_env()`."""

    home: Path
    database_url: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    upload_limit: int = 100 * 2**20  # bytes per working-directory snapshot
    # Limits a workspace's member cannot exceed (a request over one is refused, naming it).
    unpacked_limit: int = 2 * 2**30  # bytes a snapshot may hold once unpacked
    unpacked_files_limit: int = 100_000  # files and folders a snapshot may hold
    max_workers_per_job: int = 128  # workers of one job (each one a supervised process)
    max_queued_jobs: int = 1000  # jobs of one workspace waiting to run at once
    db_busy_timeout_s: float = 5.0  # a locked or unreachable database: 503 after this
    # Run each workspace's workers as a uid of its own from this range (root only; see
    # kaon.server.security.uids). None: workers run as the control plane's user.
    worker_uids: tuple[int, int] | None = None
    checkpoint_upload_limit: int = 64 * 2**30  # bytes per checkpoint file a node pushes
    reconcile_interval_s: float = 1.0
    stop_grace_s: float = 10.0  # SIGTERM, then SIGKILL after this long
    node_name: str = "local"
    node_cpus: float | None = None  # override the detected capacity (tests, shared hosts)
    node_memory: int | None = None
    node_gpus: str | None = None  # "2" or "H100:2": declared GPUs where NVML has none
    local_nodes: int = 1  # split this machine into this many nodes (testing multi-node pools)
    bootstrap_token: str | None = None  # the admin token to create on first start
    public_url: str | None = None  # how workers reach the API (default http://host:port)
    labels: dict[str, str] = field(default_factory=dict)
    ray_address: str | None = None  # attach this Ray cluster as pool "ray" on start
    # A control plane process exits at most this long after it was asked to (crash-only:
    # whatever it was doing is picked up on the next start). None in-process (tests).
    shutdown_deadline_s: float | None = None
    ray_node_dir: str = "~/.kaon/nodes"  # on each Ray node: run folders, code, checkpoints
    audit_log: bool = True  # KAON_AUDIT_LOG=off turns the audit log off (benchmarks only)
    # Each worker's supervisor samples its CPU, memory and GPUs this often (0: never); the
    # samples of a job are kept this long after it ends, and looked for this often.
    usage_interval_s: float = 5.0
    usage_retention_s: float = 7 * 86400.0
    usage_cleanup_interval_s: float = 600.0
    # Where artifact blobs go: None for a folder of the home (``artifacts/``), or
    # ``s3://bucket/prefix`` (KAON_ARTIFACT_STORE) at KAON_S3_ENDPOINT_URL (None: AWS).
    artifact_store: str | None = None
    s3_endpoint_url: str | None = None
    artifact_blob_limit: int = 64 * 2**30  # bytes of one uploaded blob (one file)
    # The artifact clean-up loop: blobs and values nothing references, after a grace
    # period (an upload in progress is never collected), and the node cache's size bound.
    artifact_grace_s: float = 86400.0
    artifact_cache_limit: int = 50 * 2**30
    artifact_cleanup_interval_s: float = 600.0
    # TLS for the API (kaon.server.security.tls): the operator's certificate and key, or
    # one the server makes under the home. Beyond loopback, one of them or `insecure`.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_self_signed: bool = False
    insecure: bool = False  # plain HTTP beyond loopback, asked for in so many words
    # Bytes one workspace may store (artifact blobs and code snapshots), unless its quota
    # says otherwise (kaon.server.services.storage_use).
    workspace_storage_limit: int = 100 * 2**30
    # Finished work's run folders, checkpoints and snapshots go this long after it ended
    # (kaon.server.reconcilers.retention), looked for this often.
    retention_s: float = 30 * 86400.0
    retention_interval_s: float = 3600.0

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def blobs_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def artifacts_dir(self) -> Path:
        """The local blob store's folder (when no KAON_ARTIFACT_STORE is set)."""
        return self.home / "artifacts"

    @property
    def artifact_cache_dir(self) -> Path:
        """This node's verified, read-only copies of artifact versions, by digest."""
        return self.home / "cache" / "artifacts"

    @property
    def checkpoints_dir(self) -> Path:
        """Each job's KAON_CHECKPOINT_DIR (local executor) or its mirror (remote nodes)."""
        return self.home / "checkpoints"

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None or self.tls_self_signed

    @property
    def api_url(self) -> str:
        if not self.tls:
            return self.public_url or f"http://{self.host}:{self.port}"
        # a wildcard is no name a certificate holds: local workers use loopback
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        return self.public_url or f"https://{host}:{self.port}"

    def ca_pem(self) -> str | None:
        """The certificate workers trust the API by (KAON_CA_PEM), when it serves TLS."""
        return self.tls_cert.read_text() if self.tls_cert is not None else None

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        env = os.environ
        home = Path(str(overrides.pop("home", None) or kaon_home()))
        url = env.get("KAON_DATABASE_URL") or f"sqlite:///{home / 'kaon.db'}"
        memory = env.get("KAON_NODE_MEMORY")
        cpus = env.get("KAON_NODE_CPUS")
        settings = cls(
            home=home,
            database_url=normalize_database_url(url),
            host=env.get("KAON_HOST", "127.0.0.1"),
            port=int(env.get("KAON_PORT", DEFAULT_PORT)),
            upload_limit=parse_memory(env.get("KAON_UPLOAD_LIMIT", "100Mi")),
            unpacked_limit=parse_memory(env.get("KAON_UNPACKED_LIMIT", "2Gi")),
            unpacked_files_limit=int(env.get("KAON_UNPACKED_FILES_LIMIT", "100000")),
            max_workers_per_job=int(env.get("KAON_MAX_WORKERS_PER_JOB", "128")),
            max_queued_jobs=int(env.get("KAON_MAX_QUEUED_JOBS", "1000")),
            db_busy_timeout_s=float(env.get("KAON_DB_BUSY_TIMEOUT_S", "5")),
            worker_uids=worker_uids_setting(env.get("KAON_WORKER_UIDS"), os.geteuid()),
            checkpoint_upload_limit=parse_memory(env.get("KAON_CHECKPOINT_UPLOAD_LIMIT", "64Gi")),
            stop_grace_s=float(env.get("KAON_STOP_GRACE_S", "10")),
            node_cpus=float(cpus) if cpus else None,
            node_memory=parse_memory(memory) if memory else None,
            node_gpus=env.get("KAON_NODE_GPUS") or None,
            local_nodes=max(1, int(env.get("KAON_LOCAL_NODES", "1"))),
            bootstrap_token=env.get("KAON_BOOTSTRAP_TOKEN") or None,
            public_url=env.get("KAON_PUBLIC_URL") or None,
            ray_address=env.get("KAON_RAY_ADDRESS") or None,
            ray_node_dir=env.get("KAON_RAY_NODE_DIR") or "~/.kaon/nodes",
            audit_log=env.get("KAON_AUDIT_LOG", "on").lower() not in ("off", "0", "false"),
            usage_interval_s=float(env.get("KAON_USAGE_INTERVAL_S", "5")),
            usage_retention_s=float(env.get("KAON_USAGE_RETENTION_DAYS", "7")) * 86400.0,
            artifact_store=env.get("KAON_ARTIFACT_STORE") or None,
            s3_endpoint_url=env.get("KAON_S3_ENDPOINT_URL") or None,
            artifact_blob_limit=parse_memory(env.get("KAON_ARTIFACT_BLOB_LIMIT", "64Gi")),
            artifact_grace_s=float(env.get("KAON_ARTIFACT_GRACE_HOURS", "24")) * 3600.0,
            artifact_cache_limit=parse_memory(env.get("KAON_ARTIFACT_CACHE_LIMIT", "50Gi")),
            tls_cert=Path(cert) if (cert := env.get("KAON_TLS_CERT")) else None,
            tls_key=Path(key) if (key := env.get("KAON_TLS_KEY")) else None,
            tls_self_signed=_flag(env.get("KAON_TLS_SELF_SIGNED")),
            insecure=_flag(env.get("KAON_INSECURE")),
            workspace_storage_limit=parse_memory(env.get("KAON_WORKSPACE_STORAGE_LIMIT", "100Gi")),
            retention_s=float(env.get("KAON_RETENTION_DAYS", "30")) * 86400.0,
        )
        if "database_url" in overrides and isinstance(overrides["database_url"], str):
            overrides["database_url"] = normalize_database_url(overrides["database_url"])
        return replace(settings, **overrides)  # type: ignore[arg-type]


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")
