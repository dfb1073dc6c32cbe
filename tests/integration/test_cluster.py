"""`ftscale train` submitted with `ray job submit` to a real two-node Ray cluster.

The cluster is two `ray start` commands on this machine — a head node and a worker node,
one CPU each, so Ray Train has to put one training worker on each node — with token
authentication on, the same way a multi-node cluster is set up (cluster/README.md).

Everything this test starts is its own: a fresh token file (never ~/.ray/auth_token), a block
of free ports picked at random, and one temp root holding both nodes' `--temp-dir`. Other Ray
clusters on the machine (other test sessions, other people) are left alone: teardown finds
its processes by that temp root (command line, cwd, a marker variable in the environment, and
the descendants of those) and stops only them; it never calls `ray stop`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import tiny_train_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

psutil = pytest.importorskip("psutil")

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
MARKER = "FTSCALE_TEST_CLUSTER"  # set to the temp root in every process this test starts
JOB_TIMEOUT_S = 480
START_TIMEOUT_S = 180
ELASTIC_BUDGET_S = 900  # test_elastic_run_survives_a_lost_node, after its cluster is up: ~5 min alone; the rest is for a loaded machine (a 300 s budget ran out at load ~12)
# Ray Train's controller knobs for that test (defaults in ray/train/v2/_internal/constants.py).
# A group restarted after a node loss is first sized from a stale view of the cluster (Ray's
# AutoscalingCoordinator refreshes its node list every 20 s; the GCS marks a node dead after
# missed health checks) and waits for the lost node's CPUs until this timeout (default 60 s), then
# starts smaller. 20 s keeps the test short; an attempt that times out does not count against
# max_failures.
ELASTIC_TIMING_ENV = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "20"}

# Port layout relative to a random base (checked free before use):
#   head   +0 GCS, +1 node manager, +2 object manager, +3 dashboard, +4/+5 dashboard agent
#          (HTTP/gRPC), +6 metrics, +7 runtime-env agent, +8 Ray Client server,
#          +100..+163 worker processes
#   worker +11 node manager, +12 object manager, +14/+15 dashboard agent, +16 metrics,
#          +17 runtime-env agent, +200..+263 worker processes
HEAD_PORTS = range(0, 9)
WORKER_NODE_PORTS = range(11, 18)
HEAD_WORKER_PORTS = range(100, 164)
NODE_WORKER_PORTS = range(200, 264)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _pick_base_port() -> int:
    """A base below the ephemeral range (32768+) whose whole layout is free right now."""
    rng = random.Random()
    offsets = [*HEAD_PORTS, *WORKER_NODE_PORTS, *HEAD_WORKER_PORTS, *NODE_WORKER_PORTS]
    for _ in range(200):
        base = rng.randrange(20000, 32000, 10)
        if all(_port_free(base + o) for o in offsets):
            return base
    raise RuntimeError("no free block of ports found in 20000-32300")


# ---------------------------------------------------------------------------------------
# Finding and stopping this session's processes


def session_processes(root: str) -> list:
    """Processes that belong to the cluster under `root`: their command line or cwd names it,
    or they carry MARKER=root (Ray renames its workers to `ray::...`, so their command lines
    say nothing; they are found as descendants of the raylets)."""
    me = os.getpid()
    keep = {me, *(p.pid for p in psutil.Process(me).parents())}
    root = root.rstrip("/")
    inside = root + "/"
    roots = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd", "environ"]):
        info = proc.info
        if info["pid"] in keep:
            continue
        cmdline = " ".join(info["cmdline"] or [])
        cwd = info["cwd"] or ""
        environ = info["environ"] or {}
        if (inside in cmdline or cmdline.endswith(root) or cwd == root or cwd.startswith(inside)
                or environ.get(MARKER) == root):
            roots.append(proc)
    found = {p.pid: p for p in roots}
    for proc in roots:
        try:
            for child in proc.children(recursive=True):
                found.setdefault(child.pid, child)
        except psutil.Error:
            pass
    for pid in keep:
        found.pop(pid, None)
    return list(found.values())


def _running(proc) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_gone(procs: list, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if _running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if _running(p)]
    return alive


def _signal(procs: list, sig: int) -> None:
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.Error:
            pass


def _cmdline(proc) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def _terminate(procs: list, grace_s: float) -> None:
    procs = [p for p in procs if _running(p)]
    _signal(procs, signal.SIGTERM)
    alive = _wait_gone(procs, grace_s)
    _signal(alive, signal.SIGKILL)
    _wait_gone(alive, 5)


def stop_session_processes(root: str, grace_s: float = 15.0) -> list[str]:
    """Stop every process of the cluster under `root`, in the order `ray stop` uses (raylets
    with their workers and agents, then the other head processes, then the GCS, which would
    otherwise wait for the others): SIGTERM, SIGKILL after `grace_s`. A final sweep catches
    anything spawned meanwhile. Returns what could not be stopped; exited processes not yet
    reaped by their parent (zombies) count as stopped."""
    procs = [p for p in session_processes(root) if _running(p)]
    raylets = [p for p in procs if "raylet/raylet" in _cmdline(p)]
    nodes = set(raylets)
    for p in raylets:
        try:
            nodes.update(p.children(recursive=True))
        except psutil.Error:
            pass
    gcs = [p for p in procs if "gcs_server" in _cmdline(p)]
    rest = [p for p in procs if p not in nodes and p not in gcs]
    for bucket in (list(nodes), rest, gcs):
        _terminate(bucket, grace_s)
    for _ in range(3):
        procs = [p for p in session_processes(root) if _running(p)]
        if not procs:
            return []
        _terminate(procs, grace_s)
    return [f"{p.pid} {_cmdline(p)[:120]}" for p in session_processes(root) if _running(p)]


# ---------------------------------------------------------------------------------------
# The cluster


@dataclass
class LocalCluster:
    root: Path
    base: int
    env: dict[str, str]

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.base}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.base + 3}"

    @property
    def token(self) -> str:
        return (self.root / "auth_token").read_text().strip()

    def ray(self, *args: str, timeout: float = 120, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([RAY, *args], env=env or self.env, cwd=self.root, capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"ray {' '.join(args)} exited {proc.returncode}\n"
                                 f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
        return proc

    def api(self, path: str, token: str | None = "") -> tuple[int, object]:
        """GET on the dashboard's REST API (the one the Jobs SDK uses); token "" = ours."""
        req = urllib.request.Request(self.dashboard_url + path)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token or self.token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, None

    def alive_nodes(self) -> int:
        out = self.ray("status", "--address", self.gcs_address).stdout
        active = out.split("Active:", 1)[1].split("Pending:", 1)[0]
        return sum(1 for line in active.splitlines() if "node_" in line)


def _start_cluster(root: Path, cpus_per_node: int = 1) -> LocalCluster:
    base = _pick_base_port()
    (root / "head").mkdir()
    (root / "worker").mkdir()
    token_file = root / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE",
                        "RAY_API_SERVER_ADDRESS")}
    env.update({
        # Ray processes that look for "the" local cluster (Ray Train's PlacementGroupCleaner
        # uses the State API without an address) would otherwise find every cluster on the
        # machine and fail; `ray start` itself ignores RAY_ADDRESS.
        "RAY_ADDRESS": f"127.0.0.1:{base}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_file),
        MARKER: str(root),
        # the job driver runs `ftscale` from PATH; workers use this venv's python (sys.executable
        # of `ray start`)
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(VENV_BIN.parent),
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
    })
    cluster = LocalCluster(root=root, base=base, env=env)
    common = ["--num-cpus", str(cpus_per_node), "--num-gpus", "0", "--object-store-memory", str(200 * 1024 * 1024),
              "--disable-usage-stats", "--log-style", "record", "--log-color", "false"]
    b = base
    cluster.ray("start", "--head", "--temp-dir", str(root / "head"), "--port", str(b),
                "--node-manager-port", str(b + 1), "--object-manager-port", str(b + 2),
                "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(b + 3),
                "--dashboard-agent-listen-port", str(b + 4), "--dashboard-agent-grpc-port", str(b + 5),
                "--metrics-export-port", str(b + 6), "--runtime-env-agent-port", str(b + 7),
                "--ray-client-server-port", str(b + 8),
                "--min-worker-port", str(b + HEAD_WORKER_PORTS[0]), "--max-worker-port", str(b + HEAD_WORKER_PORTS[-1]),
                *common, timeout=START_TIMEOUT_S)
    cluster.ray("start", "--address", cluster.gcs_address, "--temp-dir", str(root / "worker"),
                "--node-manager-port", str(b + 11), "--object-manager-port", str(b + 12),
                "--dashboard-agent-listen-port", str(b + 14), "--dashboard-agent-grpc-port", str(b + 15),
                "--metrics-export-port", str(b + 16), "--runtime-env-agent-port", str(b + 17),
                "--min-worker-port", str(b + NODE_WORKER_PORTS[0]), "--max-worker-port", str(b + NODE_WORKER_PORTS[-1]),
                *common, timeout=START_TIMEOUT_S)
    deadline = time.monotonic() + 60
    while cluster.alive_nodes() < 2:
        assert time.monotonic() < deadline, cluster.ray("status", "--address", cluster.gcs_address).stdout
        time.sleep(2)
    return cluster


@contextlib.contextmanager
def _cluster():
    """A started two-node cluster, stopped (only its own processes) on exit."""
    # short path: Ray's unix sockets live under it (108-byte limit)
    root = Path(tempfile.mkdtemp(prefix="ftray-", dir="/tmp"))
    cluster = None
    try:
        for attempt in range(3):  # a port taken between the check and `ray start`: try another block
            try:
                cluster = _start_cluster(root)
                break
            except AssertionError:
                left = stop_session_processes(str(root))
                assert not left, f"could not stop: {left}"
                for sub in ("head", "worker"):
                    shutil.rmtree(root / sub, ignore_errors=True)
                if attempt == 2:
                    raise
        yield cluster
    finally:
        left = stop_session_processes(str(root))
        if left:
            print(f"\ntest_cluster: processes still running after teardown: {left}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster():
    with _cluster() as cluster:
        yield cluster


@pytest.fixture
def doomed_cluster():
    """A cluster of its own for a test that stops its worker node."""
    with _cluster() as cluster:
        yield cluster


def lose_worker_node(cluster: LocalCluster) -> list[str]:
    """SIGKILL every process of the worker node, as a machine loss would: its raylet, agents and
    Ray workers (found by the node's temp dir, and as the raylet's descendants). Returns their
    command lines."""
    procs = [p for p in session_processes(str(cluster.root / "worker")) if _running(p)]
    killed = [_cmdline(p) for p in procs]
    assert any("raylet/raylet" in c for c in killed), killed
    _signal(procs, signal.SIGKILL)
    alive = _wait_gone(procs, 10)
    assert not alive, [_cmdline(p) for p in alive]
    return killed


# ---------------------------------------------------------------------------------------
# Tests


def test_token_auth_is_enforced(ray_cluster: LocalCluster):
    status, _ = ray_cluster.api("/api/jobs/", token=None)
    assert status == 401
    status, _ = ray_cluster.api("/api/jobs/", token="0" * 64)
    assert status in (401, 403)
    status, jobs = ray_cluster.api("/api/jobs/")
    assert status == 200 and isinstance(jobs, list)
    no_auth = {k: v for k, v in ray_cluster.env.items() if not k.startswith("RAY_AUTH_")}
    wrong = dict(ray_cluster.env, RAY_AUTH_TOKEN="0" * 64)
    wrong.pop("RAY_AUTH_TOKEN_PATH")
    for env in (no_auth, wrong):
        proc = ray_cluster.ray("job", "list", "--address", ray_cluster.dashboard_url, env=env, check=False)
        assert proc.returncode != 0
        assert "AuthenticationError" in proc.stdout + proc.stderr or "Unauthorized" in proc.stdout + proc.stderr
    assert ray_cluster.alive_nodes() == 2


def test_job_submit_trains_across_two_nodes(ray_cluster: LocalCluster, tiny_dataset, tmp_path):
    storage = (tmp_path / "storage").resolve()
    workdir = tmp_path / "job"
    workdir.mkdir()
    run_name = "cluster-tiny"
    cfg = tiny_train_config(tiny_dataset, storage, run_name=run_name, max_steps=4, checkpoint_every=2)
    (workdir / "cfg.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    # The shipped runtime env (excludes, NCCL/env vars), with our directory as working_dir: it
    # must merge with the runtime env `ftscale train` passes to ray.init.
    runtime_env = REPO / "cluster" / "runtime_env.yaml"
    submission_id = f"ftscale-cluster-{secrets.token_hex(4)}"
    ray_cluster.ray("job", "submit", "--address", ray_cluster.dashboard_url, "--runtime-env", str(runtime_env),
                    "--working-dir", str(workdir), "--submission-id", submission_id, "--no-wait",
                    "--", "ftscale", "train", "cfg.yaml")

    deadline = time.monotonic() + JOB_TIMEOUT_S
    status = None
    while time.monotonic() < deadline:
        code, info = ray_cluster.api(f"/api/jobs/{submission_id}")
        assert code == 200, code
        status = info["status"]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(5)
    if status != "SUCCEEDED":
        if status not in ("SUCCEEDED", "FAILED", "STOPPED"):
            ray_cluster.ray("job", "stop", "--address", ray_cluster.dashboard_url, submission_id, check=False)
        logs = ray_cluster.ray("job", "logs", "--address", ray_cluster.dashboard_url, submission_id, check=False)
        pytest.fail(f"job {submission_id} ended {status} (timeout {JOB_TIMEOUT_S}s)\n"
                    f"{info.get('message', '') if info else ''}\n--- ray job logs\n{logs.stdout[-15000:]}{logs.stderr[-3000:]}")

    shipped_vars = yaml.safe_load(runtime_env.read_text()).get("env_vars", {})
    assert info["runtime_env"].get("env_vars", {}) == shipped_vars

    run_dir = storage / run_name
    done = sorted(p for p in run_dir.glob("checkpoint_*") if (p / "ftscale_run.json").is_file())
    assert [p.name for p in done] == ["checkpoint_0000002", "checkpoint_0000004"], list(run_dir.iterdir())
    run = json.loads((done[-1] / "ftscale_run.json").read_text())
    assert run["step"] == 4 and run["world_size"] == 2

    # one Ray Train worker on each node (each node has one CPU, the workers want one each)
    actors = json.loads(ray_cluster.ray("list", "actors", "--address", ray_cluster.gcs_address,
                                        "--filter", f"job_id={info['job_id']}",
                                        "--filter", "class_name=RayTrainWorker",
                                        "--detail", "--format", "json").stdout)
    assert len(actors) == 2 and len({a["node_id"] for a in actors}) == 2, actors


def _submit(cluster: LocalCluster, workdir: Path, entrypoint: list[str], *options: str) -> str:
    """Submit a job without waiting; returns its submission id."""
    submission_id = f"ftscale-job-{secrets.token_hex(4)}"
    cluster.ray("job", "submit", "--address", cluster.dashboard_url, "--working-dir", str(workdir),
                "--submission-id", submission_id, "--no-wait", *options, "--", *entrypoint)
    return submission_id


def _wait_job(cluster: LocalCluster, submission_id: str, timeout_s: float = JOB_TIMEOUT_S) -> dict:
    """Wait for a job; fail with its logs unless it succeeded within `timeout_s` (then it is
    stopped). Returns its info."""
    deadline = time.monotonic() + timeout_s
    while True:
        code, info = cluster.api(f"/api/jobs/{submission_id}")
        assert code == 200, code
        if info["status"] in ("SUCCEEDED", "FAILED", "STOPPED") or time.monotonic() > deadline:
            break
        time.sleep(2)
    if info.get("status") != "SUCCEEDED":
        cluster.ray("job", "stop", "--address", cluster.dashboard_url, submission_id, check=False)
        logs = cluster.ray("job", "logs", "--address", cluster.dashboard_url, submission_id, check=False)
        pytest.fail(f"job {submission_id} ended {info.get('status')} (timeout {timeout_s:.0f}s)\n"
                    f"{info.get('message', '')}\n--- ray job logs\n{logs.stdout[-15000:]}")
    return info


def _run_job(cluster: LocalCluster, workdir: Path, entrypoint: list[str]) -> dict:
    """Submit a job, wait for it, fail with its logs unless it succeeded; returns its info."""
    return _wait_job(cluster, _submit(cluster, workdir, entrypoint))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".ftscale-work" not in p.parts}


def test_ray_data_executor_on_two_nodes_writes_the_local_bytes(ray_cluster: LocalCluster, tmp_path):
    """`ftscale prep` and `ftscale dedup` with --executor ray, submitted to the 2-node cluster,
    write the same bytes as the local executor: shards, stores, manifest (with its checksums),
    decisions, quarantine, reports."""
    from conftest import build_tokenizer, sample_texts, tiny_chats

    from ftscale.cli import main

    texts = sample_texts(600)
    data = tmp_path / "data"
    data.mkdir()
    for k in range(3):  # three files: three units, spread over both nodes
        rows = texts[k * 200:(k + 1) * 200] + [t.upper() for t in texts[k * 200:k * 200 + 20]]
        (data / f"part-{k}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows) + "{bad\n")
    (data / "chat.jsonl").write_text("".join(json.dumps(c) + "\n" for c in tiny_chats(300)))
    (data / "eval.jsonl").write_text(json.dumps({"text": texts[7]}) + "\n")
    tok = build_tokenizer(tmp_path / "tokenizer", texts)
    workdir = tmp_path / "job"
    workdir.mkdir()
    prep = {"seq_len": 128, "val_fraction": 0.1, "shard_rows": 64, "tokenizer": {"path": str(tok)},
            "sources": [{"name": "bible", "paths": [str(data / f"part-{k}.jsonl") for k in range(3)]},
                        {"name": "chat", "kind": "sft", "overlong": "truncate", "paths": [str(data / "chat.jsonl")]}],
            "decontaminate": {"eval_paths": [str(data / "eval.jsonl")]}}
    (workdir / "prep.yaml").write_text(yaml.safe_dump({"output": str(tmp_path / "unused"), **prep}))
    dedup = [*(str(data / f"part-{k}.jsonl") for k in range(3)), "--decontaminate", str(data / "eval.jsonl"),
             "--audit", "10", "--part-rows", "100"]

    local, remote = tmp_path / "local", tmp_path / "ray"
    assert main(["prep", str(workdir / "prep.yaml"), f"output={local / 'prep'}"]) == 0
    assert main(["dedup", *dedup, "--out", str(local / "dedup")]) == 0
    script = (f"ftscale prep prep.yaml output={remote / 'prep'} --executor ray && "
              f"ftscale dedup {' '.join(dedup)} --out {remote / 'dedup'} --executor ray")
    info = _run_job(ray_cluster, workdir, ["bash", "-c", script])

    for name in ("prep", "dedup"):
        a, b = _tree(local / name), _tree(remote / name)
        assert a.keys() == b.keys() and len(a) > 5, (sorted(a), sorted(b))
        for rel in a:
            assert a[rel] == b[rel], f"{name}/{rel} differs between the local and the Ray Data executor"
    # The units ran on both nodes (Ray Data's map workers are actors of the job).
    actors = json.loads(ray_cluster.ray("list", "actors", "--address", ray_cluster.gcs_address,
                                        "--filter", f"job_id={info['job_id']}", "--detail", "--format", "json",
                                        "--limit", "1000").stdout)
    mappers = [a for a in actors if "UnitMapper" in a.get("class_name", "") + a.get("name", "")]
    assert len({a["node_id"] for a in mappers}) == 2, [(a.get("class_name"), a["node_id"]) for a in actors]


def _loss_rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl's step rows in the order written (a resumed run appends its own)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "loss" in r]


def _committed_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.parent.name.split("_")[1]) for p in run_dir.glob("checkpoint_*/ftscale_commit.json"))


def test_elastic_run_survives_a_lost_node(doomed_cluster: LocalCluster, tiny_dataset, tmp_path):
    """`num_workers: [1, 2]` on two one-CPU nodes: two workers, one per node. Once a checkpoint
    is committed and the next step logged, the worker node is SIGKILLed (raylet, agents, Ray
    workers: a machine loss). Ray Train restarts the group on the one node left, from the newest
    committed checkpoint (ZeRO-2 via the universal form), and the job succeeds; the steps after
    the resume equal a separate 1-worker run resumed from a copy of that checkpoint."""
    from ftscale.train.runs import RUN_FILE, checkpoint_name, verified

    cluster = doomed_cluster
    deadline = time.monotonic() + ELASTIC_BUDGET_S
    storage = (tmp_path / "storage").resolve()
    workdir = tmp_path / "job"
    workdir.mkdir()
    max_steps = 8
    # keep_checkpoints: all four, so the one the run resumed from is still there at the end.
    common = {"max_steps": max_steps, "checkpoint_every": 2, "keep_checkpoints": 4, "zero_stage": 2,
              "tokens_per_step": 1024}  # 1024 = 2 workers x 2 rows x 128 tokens x accumulation 2 (4 on 1 worker)
    cfg = tiny_train_config(tiny_dataset, storage, run_name="elastic", num_workers=[1, 2], **common)
    (workdir / "elastic.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    runtime_env = ["--runtime-env-json", json.dumps({"env_vars": ELASTIC_TIMING_ENV})]
    job = _submit(cluster, workdir, ["ftscale", "train", "elastic.yaml"], *runtime_env)

    run_dir = storage / "elastic"
    while True:
        committed = _committed_steps(run_dir)
        if committed and any(r["step"] > committed[0] for r in _loss_rows(run_dir)):
            break
        code, info = cluster.api(f"/api/jobs/{job}")
        assert code == 200, code
        if time.monotonic() > deadline or info["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            _wait_job(cluster, job, timeout_s=0)  # fails with the job's logs unless it succeeded
            pytest.fail(f"the run ended before the node was lost: {info['status']}")
        time.sleep(0.2)
    first = committed[0]
    assert json.loads((run_dir / checkpoint_name(first) / RUN_FILE).read_text())["world_size"] == 2
    killed = lose_worker_node(cluster)
    assert any("RayTrainWorker" in c for c in killed), killed  # one training worker was on it

    _wait_job(cluster, job, timeout_s=deadline - time.monotonic())
    assert cluster.alive_nodes() == 1
    logs = cluster.ray("job", "logs", "--address", cluster.dashboard_url, job).stdout
    assert "resuming a 2-worker checkpoint on 1 workers" in logs, logs[-5000:]

    rows = _loss_rows(run_dir)
    steps = [r["step"] for r in rows]
    back = [i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]]
    assert len(back) == 1, steps  # one restart, back to a committed checkpoint
    resumed_from = steps[back[0]] - 1
    assert steps[back[0]:] == list(range(resumed_from + 1, max_steps + 1)), steps
    ckpt = verified(run_dir / checkpoint_name(resumed_from))
    assert json.loads((ckpt / RUN_FILE).read_text())["world_size"] == 2
    last = json.loads((run_dir / checkpoint_name(max_steps) / RUN_FILE).read_text())
    assert last["step"] == max_steps and last["world_size"] == 1

    # The same checkpoint, resumed by a 1-worker run of its own on the node that is left.
    ref_storage = (tmp_path / "reference").resolve()
    shutil.copytree(ckpt, ref_storage / "reference" / ckpt.name)
    ref = tiny_train_config(tiny_dataset, ref_storage, run_name="reference", num_workers=1, **common)
    (workdir / "reference.yaml").write_text(yaml.safe_dump(ref, sort_keys=False))
    _wait_job(cluster, _submit(cluster, workdir, ["ftscale", "train", "reference.yaml"], *runtime_env),
              timeout_s=deadline - time.monotonic())
    expected = _loss_rows(ref_storage / "reference")
    assert [r["step"] for r in expected] == steps[back[0]:]
    assert [r["loss"] for r in rows[back[0]:]] == pytest.approx([r["loss"] for r in expected], rel=1e-4)
