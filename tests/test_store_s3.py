"""Stores on S3: a real S3-compatible server (moto's server mode) started on 127.0.0.1.

Extract into s3://, the same bits as a local folder; kill -9 and resume; the lock (conditional
create, heartbeat, lease, takeover, --break-lock); info / verify / rm on the bucket; one-line errors.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from _stc_helpers import cli, assert_same_arrays, read_store
from conftest import REPO, run_cli
from stcstore.errors import StoreLockedError
from stcstore.store import open_run
from stcstore.store.location import open_location
from stcstore.store.lock import WriterLock, read_lock

moto_server = pytest.importorskip("moto.server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3():
    """A moto S3 server on a free port; the AWS variables point every process (ours, subprocesses) at it."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        import boto3

        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        yield client, env
    server.stop()


@pytest.fixture
def bucket(s3) -> str:
    """A fresh bucket per test."""
    client, _ = s3
    name = f"stc-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=name)
    return name


def _keys(client, bucket: str, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


TINY_ARGS = ("--limit", "40", "--chunk-rows", "8", "--max-length", "32", "--no-progress", "--run", "r1")


def _tiny_args(tiny_model, review_csv, *more: str) -> list[str]:
    return ["extract", "--model", str(tiny_model("bert")), "--data", str(review_csv), *TINY_ARGS, *more]


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory, tiny_model, review_csv) -> dict:
    """The same extraction into a local folder."""
    store = tmp_path_factory.mktemp("ref") / "ref.zarr"
    res = cli(*_tiny_args(tiny_model, review_csv), "--store", str(store))
    assert res.returncode == 0, res.stderr
    return read_store(store)


def test_extract_into_s3_equals_a_local_folder(s3, bucket, tiny_model, review_csv, local_reference):
    client, _ = s3
    url = f"s3://{bucket}/x.zarr"
    res = cli(*_tiny_args(tiny_model, review_csv), "--store", url)
    assert res.returncode == 0, res.stderr
    assert f"in {url}" in " ".join(res.stderr.split())
    assert_same_arrays(read_store(url), local_reference)
    keys = _keys(client, bucket, "x.zarr/r1/_progress/train/")
    assert keys == [f"x.zarr/r1/_progress/train/w{w:08d}.json" for w in range(5)]  # one object per window
    assert json.loads(client.get_object(Bucket=bucket, Key=keys[0])["Body"].read())["rows"] == 8
    assert not _keys(client, bucket, "x.zarr/r1/_writer.lock"), "the lock is gone after the writer finished"
    # a rerun has nothing to do
    res = cli(*_tiny_args(tiny_model, review_csv), "--store", url)
    assert res.returncode == 0 and "5 windows resumed" in " ".join(res.stderr.split())


def test_info_verify_rm_on_the_bucket(s3, bucket, tiny_model, review_csv):
    client, _ = s3
    url = f"s3://{bucket}/s.zarr"
    assert cli(*_tiny_args(tiny_model, review_csv), "--store", url).returncode == 0
    res = cli("info", "--store", url, "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    # bytes counted independently: the sizes the server lists for every object under the store
    sizes = {o["Key"]: o["Size"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
             for o in page.get("Contents", [])}
    assert summary["bytes_on_disk"] == sum(sizes.values())
    run = summary["runs"][0]
    assert run["complete"] and run["completion"]["train"] == {"windows_done": 5, "windows_total": 5}
    hidden_mean = next(a for a in run["arrays"] if a["site"] == "hidden" and a["pool"] == "mean")
    assert hidden_mean["bytes_stored"] == sum(v for k, v in sizes.items() if k.startswith("s.zarr/r1/train/hidden/mean/"))
    res = cli("verify", "--store", url)
    assert res.returncode == 0 and "run r1: 5 committed windows" in res.stdout
    # a deleted chunk object is found (it would read as zeros), and --repair forgets its window
    chunk = next(k for k in sizes if k.startswith("s.zarr/r1/train/ffn/max/c/1/2/"))
    client.delete_object(Bucket=bucket, Key=chunk)
    res = cli("verify", "--store", url)
    assert res.returncode == 2 and "train/ffn/max window 2 (rows 16-23, layer 1): missing" in res.stderr
    assert cli("verify", "--store", url, "--repair").returncode == 0
    assert open_run(url).completion()["train"] == (4, 5)
    res = cli("rm", "--store", url, "--run", "r1")
    assert res.returncode == 0, res.stderr
    assert _keys(client, bucket, "s.zarr/r1") == []
    assert _keys(client, bucket, "s.zarr/zarr.json")  # the store itself stays


def test_storage_option_endpoint_instead_of_the_environment(s3, bucket, tiny_model, review_csv, monkeypatch):
    _, env = s3
    assert cli(*_tiny_args(tiny_model, review_csv), "--store", f"s3://{bucket}/o.zarr", "--site", "hidden",
               "--pool", "mean").returncode == 0
    res = run_cli("info", "--store", f"s3://{bucket}/o.zarr", "--storage-option", f"endpoint_url={env['AWS_ENDPOINT_URL']}",
                  env={"AWS_ENDPOINT_URL": ""})
    assert res.returncode == 0, res.stderr
    assert "1 run(s)" in res.stdout


def test_second_writer_refused_while_the_first_holds_the_lock(s3, bucket, tiny_model, review_csv):
    url = f"s3://{bucket}/l.zarr"
    assert cli(*_tiny_args(tiny_model, review_csv), "--store", url).returncode == 0
    with WriterLock(open_location(url) / "r1", "r1"):
        res = cli(*_tiny_args(tiny_model, review_csv), "--store", url)
    assert res.returncode == 2
    err = " ".join(res.stderr.split())
    assert f"run 'r1' is being written by pid {os.getpid()} on {socket.gethostname()}" in err
    assert "lease 60 s" in err and "--break-lock" in err
    assert len([l for l in res.stderr.splitlines() if l.startswith("error:")]) == 1


def test_heartbeat_moves_while_held(s3, bucket, monkeypatch):
    monkeypatch.setenv("STCSTORE_LOCK_LEASE", "1.2")  # a beat every 0.2 s
    loc = open_location(f"s3://{bucket}/h.zarr") / "r1"
    with WriterLock(loc, "r1") as lock:
        first = read_lock(loc / "_writer.lock")
        time.sleep(0.7)
        later = read_lock(loc / "_writer.lock")
        assert later["heartbeat"] > first["heartbeat"] and later["_etag"] != first["_etag"]
        assert later["token"] == lock._token and lock.lost is None
    assert read_lock(loc / "_writer.lock") is None


def _hold_and_die(url: str, run: str, env: dict | None = None) -> None:
    """A real process takes the lock and is killed with -9 (no release, no cleanup)."""
    code = ("import os, signal; from stcstore.store.lock import WriterLock; "
            f"WriterLock({url!r} + '/' + {run!r}, {run!r}).acquire(); os.kill(os.getpid(), signal.SIGKILL)")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, **(env or {})}, timeout=120)
    assert res.returncode == -signal.SIGKILL


def test_stale_lock_taken_over_after_its_lease(s3, bucket, tiny_model, review_csv):
    url = f"s3://{bucket}/t.zarr"
    assert cli(*_tiny_args(tiny_model, review_csv), "--store", url, "--chunk-rows", "16").returncode == 0
    _hold_and_die(url, "r1", {"STCSTORE_LOCK_LEASE": "4"})
    held = read_lock(open_location(url) / "r1" / "_writer.lock")
    assert held is not None and held["lease_s"] == 4
    res = cli(*_tiny_args(tiny_model, review_csv), "--store", url, "--chunk-rows", "16")
    if time.time() - held["heartbeat"] < 3.5:  # still inside the dead writer's lease
        assert res.returncode == 2 and "heartbeat" in res.stderr
    time.sleep(max(0.0, held["heartbeat"] + 4.2 - time.time()))
    res = cli(*_tiny_args(tiny_model, review_csv), "--store", url, "--chunk-rows", "16")
    assert res.returncode == 0, res.stderr
    assert "took over the lock of pid" in " ".join(res.stderr.split())
    assert read_lock(open_location(url) / "r1" / "_writer.lock") is None


def test_racing_writers_on_a_stale_lock_exactly_one_wins(s3, bucket):
    loc = open_location(f"s3://{bucket}/race.zarr") / "r1"
    dead = {"pid": 1, "host": "gone", "token": "x", "heartbeat": time.time() - 3600, "lease_s": 60}
    (loc / "_writer.lock").write_text(json.dumps(dead))
    results: list = [None] * 4
    start = threading.Barrier(4)

    def take(i: int) -> None:
        start.wait()
        try:
            results[i] = WriterLock(loc, "r1").acquire()
        except StoreLockedError as exc:
            results[i] = exc

    threads = [threading.Thread(target=take, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if isinstance(r, WriterLock)]
    assert len(winners) == 1, results
    assert read_lock(loc / "_writer.lock")["token"] == winners[0]._token
    winners[0].release()


def test_break_lock_after_kill(s3, bucket, tiny_model, review_csv):
    url = f"s3://{bucket}/b.zarr"
    assert cli(*_tiny_args(tiny_model, review_csv), "--store", url, "--chunk-rows", "16").returncode == 0
    _hold_and_die(url, "r1", {"STCSTORE_LOCK_LEASE": "3"})  # beats every 0.5 s; breaking waits about 1 s
    res = cli(*_tiny_args(tiny_model, review_csv), "--store", url, "--chunk-rows", "16", "--break-lock")
    assert res.returncode == 0, res.stderr
    err = " ".join(res.stderr.split())
    assert "removed the lock of pid" in err and socket.gethostname() in err
    assert open_run(url).is_complete()
    # rm refuses a dead writer's run until --break-lock removes its lock, saying whose it was
    _hold_and_die(url, "r1", {"STCSTORE_LOCK_LEASE": "3"})
    res = cli("rm", "--store", url, "--run", "r1")
    assert res.returncode == 2 and "is being written by pid" in res.stderr
    res = cli("rm", "--store", url, "--run", "r1", "--break-lock")
    assert res.returncode == 0, res.stderr
    assert "run 'r1': removed the lock of pid" in " ".join(res.stderr.split())
    assert _keys(s3[0], bucket, "b.zarr/r1") == []


def test_break_lock_refuses_a_live_writer(s3, bucket, monkeypatch):
    monkeypatch.setenv("STCSTORE_LOCK_LEASE", "1.2")
    url = f"s3://{bucket}/lv.zarr"
    loc = open_location(url) / "r1"
    from stcstore.store.lock import break_lock

    with WriterLock(loc, "r1"):
        with pytest.raises(StoreLockedError, match="alive"):
            break_lock(loc / "_writer.lock", "run 'r1'")


def test_errors_are_one_line(s3, bucket, tmp_path):
    _, env = s3
    no_creds = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                "AWS_CONFIG_FILE": str(tmp_path / "none")}
    cases = [
        (["info", "--store", f"s3://{bucket}/x.zarr"], no_creds, "no credentials for s3://"),
        (["info", "--store", "s3://"], {}, "name a path inside the bucket"),
        (["info", "--store", "zzz://a/b"], {}, "unknown protocol 'zzz'"),
        (["info", "--store", f"s3://{bucket}/none.zarr"], {}, "does not exist"),
        (["info", "--store", f"s3://no-such-bucket-{bucket}/x.zarr", "--storage-option", "x"], {}, "KEY=VALUE"),
        (["extract", "--model", "m", "--data", "d", "--store", f"s3://no-such-bucket-{bucket}/x.zarr"], {},
         "does not exist"),
    ]
    for args, extra, want in cases:
        res = run_cli(*args, env=extra)
        lines = [l for l in res.stderr.splitlines() if l.strip()]
        assert res.returncode == 2, (args, res.stderr)
        assert len(lines) == 1 and lines[0].startswith("error:") and want in lines[0], (args, res.stderr)


@pytest.mark.slow
def test_kill9_mid_extract_then_resume_is_bitwise_equal(s3, bucket, tiny_model, review_csv, tmp_path):
    client, _ = s3
    url = f"s3://{bucket}/k.zarr"
    args = ["extract", "--model", str(tiny_model("bert")), "--data", str(review_csv), "--chunk-rows", "8",
            "--batch-size", "4", "--max-length", "64", "--no-progress", "--run", "r1"]
    ref = tmp_path / "ref.zarr"
    assert cli(*args, "--store", str(ref)).returncode == 0
    env = {**os.environ, "STCSTORE_LOCK_LEASE": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "stcstore", *args, "--store", url], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while proc.poll() is None and time.time() < deadline:
            if len(_keys(client, bucket, "k.zarr/r1/_progress/train/")) >= 2:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the kill must land while the extraction runs"
    done = len(_keys(client, bucket, "k.zarr/r1/_progress/train/"))
    assert 2 <= done < 19, "killed part way (150 rows, 19 windows)"
    assert _keys(client, bucket, "k.zarr/r1/_writer.lock"), "a killed writer leaves its lock"
    time.sleep(3.2)  # the dead writer's lease runs out
    res = run_cli(*args, "--store", url, env={"STCSTORE_LOCK_LEASE": "3"})
    assert res.returncode == 0, res.stderr
    err = " ".join(res.stderr.split())
    assert "took over the lock" in err and f"{done} windows resumed" in err
    assert_same_arrays(read_store(url), read_store(ref))


@pytest.mark.slow
def test_two_ranks_under_torchrun_into_the_bucket(s3, bucket, tiny_model, review_csv, tmp_path):
    url = f"s3://{bucket}/d.zarr"
    args = ["extract", "--model", str(tiny_model("bert")), "--data", str(review_csv), "--chunk-rows", "8",
            "--max-length", "32", "--limit", "64", "--no-progress", "--run", "r1"]
    ref = tmp_path / "ref.zarr"
    assert run_cli(*args, "--store", str(ref), env={"OMP_NUM_THREADS": "1"}).returncode == 0
    exe = os.path.join(os.path.dirname(sys.executable), "torchrun")
    launcher = [exe] if os.path.exists(exe) else [sys.executable, "-m", "torch.distributed.run"]
    res = subprocess.run([*launcher, "--standalone", "--nproc-per-node", "2", "-m", "stcstore", "--", *args,
                          "--store", url], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "x 2 ranks" in " ".join(res.stderr.split())
    r = open_run(url)
    assert r.is_complete()
    assert {rec["rank"] for rec in r.window_records("train").values()} == {0, 1}
    assert_same_arrays(read_store(url), read_store(ref))


def test_probe_reads_and_writes_its_experiment_in_the_bucket(s3, bucket, tiny_model, review_csv, tmp_path):
    """probe --store s3://...: the same result as on a local copy of the run; every file in the bucket."""
    client, _ = s3
    url = f"s3://{bucket}/p.zarr"
    extract_args = ["extract", "--model", str(tiny_model("bert")), "--data", str(review_csv), "--max-length", "32",
                    "--no-progress", "--run", "r1", "--site", "hidden", "--pool", "mean,last", "--chunk-rows", "32"]
    local = tmp_path / "p.zarr"
    assert cli(*extract_args, "--store", url).returncode == 0
    assert cli(*extract_args, "--store", str(local)).returncode == 0
    probe = ["probe", "--label", "label", "--c-grid", "0.1,1", "--eta-grid", "0.5,1", "--backend", "sklearn",
             "--no-progress", "--json", "--device", "cpu"]
    res = cli(*probe, "--store", url, "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    remote = json.loads(res.stdout)
    res = cli(*probe, "--store", str(local))
    assert res.returncode == 0, res.stderr
    want = json.loads(res.stdout)
    for key in ("val", "test", "site", "pool", "k", "eta", "C", "n_features"):
        assert remote["stc"][key] == want["stc"][key], key
    keys = _keys(client, bucket, "p.zarr/r1/probes/label/")
    names = {k[len("p.zarr/r1/probes/label/"):] for k in keys}
    assert {"experiment.json", "report.json", "search.json", "classifier/config.json",
            "classifier/weights.safetensors", "accuracy_per_layer.png"} <= names
    assert "_probe.lock" not in names, "the lock is released"
    assert _keys(client, bucket, "p.zarr/r1/_cache/"), "layer fits and statistics are cached in the bucket"
    report = json.loads(client.get_object(Bucket=bucket, Key="p.zarr/r1/probes/label/report.json")["Body"].read())
    assert report["stc"]["test"] == want["stc"]["test"]
    # the --out copy came down from the bucket; the classifier in the bucket loads as it is
    assert json.loads((tmp_path / "out" / "report.json").read_text())["stc"] == remote["stc"]
    from stcstore.classifier.artifact import ClassifierArtifact

    art = ClassifierArtifact.load(f"{url}/r1/probes/label/classifier")
    assert art.classes == want["classes"] and art.k == want["stc"]["k"]
    local_clf = local / "r1" / "probes" / "label" / "classifier"
    texts = ["good great fun movie", "boring dull plot"]
    got = cli("predict", "--classifier", f"{url}/r1/probes/label/classifier", *texts)
    assert got.returncode == 0, got.stderr
    assert got.stdout == cli("predict", "--classifier", str(local_clf), *texts).stdout
    assert set(got.stdout.split()) <= set(want["classes"])
    # the same command again returns the finished experiment from the bucket
    res = cli(*probe, "--store", url)
    assert res.returncode == 0 and json.loads(res.stdout)["stc"] == remote["stc"]
    res = cli("info", "--store", url, "--json")
    assert [e["name"] for e in json.loads(res.stdout)["runs"][0]["experiment_reports"]] == ["label"]
    assert cli("rm", "--store", url, "--experiment", "label").returncode == 0
    assert _keys(client, bucket, "p.zarr/r1/probes/label/") == []


@pytest.mark.slow
def test_a_stopped_writer_whose_lock_was_taken_over_commits_nothing_more(s3, bucket, tiny_model, review_csv, tmp_path):
    """SIGSTOP a writer past its lease, let another take over and finish, SIGCONT: the first stops (exit 2)."""
    client, _ = s3
    url = f"s3://{bucket}/z.zarr"
    args = ["extract", "--model", str(tiny_model("bert")), "--data", str(review_csv), "--chunk-rows", "8",
            "--batch-size", "4", "--max-length", "64", "--no-progress", "--run", "r1"]
    ref = tmp_path / "ref.zarr"
    assert cli(*args, "--store", str(ref)).returncode == 0
    env = {**os.environ, "STCSTORE_LOCK_LEASE": "2"}
    records = "z.zarr/r1/_progress/train/"
    first = subprocess.Popen([sys.executable, "-m", "stcstore", *args, "--store", url], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while first.poll() is None and time.time() < deadline and len(_keys(client, bucket, records)) < 2:
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)
        stopped_at = len(_keys(client, bucket, records))
        assert 2 <= stopped_at < 19, "stopped part way"
        time.sleep(2.5)  # its heartbeat is now older than its lease
        second = run_cli(*args, "--store", url, env={"STCSTORE_LOCK_LEASE": "2"})
        assert second.returncode == 0, second.stderr
        assert "took over the lock" in " ".join(second.stderr.split())
        done = {k: client.head_object(Bucket=bucket, Key=k)["ETag"] for k in _keys(client, bucket, records)}
        assert len(done) == 19
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
            first.kill()
    assert first.returncode == 2, err
    assert "lost the lock" in " ".join(err.split())
    after = {k: client.head_object(Bucket=bucket, Key=k)["ETag"] for k in _keys(client, bucket, records)}
    assert after == done, "the stopped writer committed nothing after it woke"
    assert_same_arrays(read_store(url), read_store(ref))
