"""Extraction in shards (otolith_core.shards) and their executors (otolith_core.cluster): a plan hashed once, shards
that write only their own folders and resume after a kill, merges that check what they fold in, and submitit's
local cluster and a local Ray instance driving the same code paths as a real cluster."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from otolith_core.cli import main
from otolith_core.data import load_dataset
from otolith_core.embeddings import extract_embeddings
from otolith_core.encoders import REDUCED_PRECISION_COSINE_FLOOR, resolve_encoder
from otolith_core.shards import (ShardPlan, merge_shards, plan_shards, read_batch, run_shard, shard_of,
                                 shard_states)


def _manifest(demo_manifest: Path, folder: Path, rows: int | None = None) -> Path:
    table = pd.read_csv(demo_manifest)
    table["path"] = [str(demo_manifest.parent / p) for p in table.path]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"manifest-{rows or 'all'}.csv"
    (table if rows is None else table.head(rows)).to_csv(path, index=False)
    return path


def _vit(tiny_timm_dir: Path) -> str:
    return f"local-dir:{tiny_timm_dir}"


def _one_process(manifest: Path, model: str, cache: Path):
    return extract_embeddings(load_dataset(manifest), resolve_encoder(model), cache_dir=cache)


def _assert_same(merged, single) -> None:
    """The merged cache holds the same keys as a one-process extraction, each embedding within the cosine floor."""
    assert merged.keys == single.keys and np.array_equal(merged.rows, single.rows)
    a, b = merged.features, single.features
    cosine = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= REDUCED_PRECISION_COSINE_FLOOR


def test_an_images_shard_follows_from_its_content_alone_so_added_rows_move_none(demo_manifest, tmp_path):
    fewer = _manifest(demo_manifest, tmp_path, rows=90)
    everything = _manifest(demo_manifest, tmp_path / "all")
    first = plan_shards(load_dataset(fewer), "pixels-32", cache_dir=tmp_path / "a", n_shards=4)
    second = plan_shards(load_dataset(everything), "pixels-32", cache_dir=tmp_path / "b", n_shards=4)
    before = {e["key"]: i for i in range(4) for e in first.images(i)}
    after = {e["key"]: i for i in range(4) for e in second.images(i)}
    assert len(before) == 90 and len(after) > len(before)
    assert all(after[key] == shard for key, shard in before.items())
    assert all(shard_of(key, 4) == shard for key, shard in after.items())
    assert min(len(second.images(i)) for i in range(4)) > 0  # the content hash spreads the images
    again = plan_shards(load_dataset(fewer), "pixels-32", cache_dir=tmp_path / "a", n_shards=4)
    assert again.folder == first.folder and [again.images(i) for i in range(4)] == [first.images(i) for i in range(4)]


def test_images_the_cache_holds_are_not_planned(demo_manifest, tmp_path):
    manifest = _manifest(demo_manifest, tmp_path, rows=30)
    _one_process(_manifest(demo_manifest, tmp_path / "first", rows=12), "pixels-32", tmp_path / "cache")
    plan = plan_shards(load_dataset(manifest), "pixels-32", cache_dir=tmp_path / "cache", n_shards=2)
    assert plan.n_images == 18


@pytest.mark.slow
def test_vit_shards_killed_and_rerun_merge_into_what_one_process_extracts(demo_manifest, tiny_timm_dir, tmp_path):
    """Three shards of a random-weight ViT; shard 0 is killed (SIGKILL) after its first batches, a half-written
    batch and an unreadable one lie in its folder; rerun, it does only what is missing; merged, the cache equals a
    one-process extraction. A shard writes nothing but its own folder."""
    manifest = _manifest(demo_manifest, tmp_path, rows=60)
    cache = tmp_path / "cache"
    plan = plan_shards(load_dataset(manifest), _vit(tiny_timm_dir), cache_dir=cache, n_shards=3, batch_size=1)
    assert plan.n_images == 60
    shard = plan.shard_folder(0)
    process = subprocess.Popen(plan.shard_command(0), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(list(shard.glob("batch-*.npz"))) < 2 and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = sorted(shard.glob("batch-*.npz"))
    assert 2 <= len(written) < len(plan.images(0)) and not (shard / "done").exists(), "the kill came too late"
    kept = {key for path in written for key in read_batch(path).keys}
    (shard / "batch-000900.npz.tmp").write_bytes(b"half a batch")  # killed while writing
    (shard / "batch-000901.npz").write_bytes(b"not an npz")  # a disk that lost a file's end
    assert merge_shards(cache).merged_images == len(kept)  # the whole batches merge already; the others are named
    before = _cache_files(cache)
    outcome = run_shard(plan.folder, 0)
    assert outcome.extracted == len(plan.images(0)) - len(kept) and outcome.embedded == len(plan.images(0))
    assert not list(shard.glob("*.tmp")) and not (shard / "batch-000901.npz").exists()
    for index in (1, 2):
        run_shard(plan.folder, index)
    assert _cache_files(cache) == before, "a shard wrote outside its folder"
    report = merge_shards(cache)
    assert report.merged_images == 60 - len(kept) and not report.problems
    assert all(state.done and state.merged == state.batches for state in shard_states(plan))
    single = _one_process(manifest, _vit(tiny_timm_dir), tmp_path / "single")
    merged = extract_embeddings(load_dataset(manifest), resolve_encoder(_vit(tiny_timm_dir)), cache_dir=cache)
    assert merged.n_extracted == 0
    _assert_same(merged, single)


def _cache_files(cache: Path) -> dict[str, int]:
    """The cache's files outside the shards' folders, with their modification times."""
    return {str(p.relative_to(cache)): p.stat().st_mtime_ns for p in cache.rglob("*")
            if p.is_file() and "shards" not in p.relative_to(cache).parts}


def _finished_plan(demo_manifest: Path, tmp_path: Path, rows: int = 24) -> tuple[ShardPlan, Path]:
    manifest = _manifest(demo_manifest, tmp_path, rows=rows)
    plan = plan_shards(load_dataset(manifest), "pixels-32", cache_dir=tmp_path / "cache", n_shards=2)
    for index in range(2):
        run_shard(plan.folder, index)
    return plan, manifest


def test_two_merges_at_once_and_a_third_after_give_the_same_cache(demo_manifest, tmp_path):
    plan, manifest = _finished_plan(demo_manifest, tmp_path)
    reports = []
    threads = [threading.Thread(target=lambda: reports.append(merge_shards(tmp_path / "cache"))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.merged_images for r in reports) == [0, 24]  # they took turns; the second found it done
    assert merge_shards(tmp_path / "cache").merged_batches == 0
    merged = extract_embeddings(load_dataset(manifest), resolve_encoder("pixels-32"), cache_dir=tmp_path / "cache")
    assert merged.n_extracted == 0 and len(merged.rows) == 24
    _assert_same(merged, _one_process(manifest, "pixels-32", tmp_path / "single"))


@pytest.mark.parametrize("damage", ["identity", "stray key", "dimension"])
def test_a_batch_that_does_not_belong_is_left_out_and_named(demo_manifest, tmp_path, damage):
    plan, manifest = _finished_plan(demo_manifest, tmp_path, rows=12)
    path = sorted(plan.shard_folder(0).glob("batch-*.npz"))[0]
    with np.load(path) as stored:
        fields = {name: stored[name] for name in stored.files}
    identity = json.loads(str(fields["identity"]))
    if damage == "identity":  # computed with other weights, another preprocessing or precision
        fields["identity"] = np.asarray(json.dumps({**identity, "fingerprint": "0" * 64}))
    elif damage == "stray key":  # a batch of another plan copied in
        fields["keys"] = np.asarray(["f" * 64 + ":full", *fields["keys"][1:]])
    else:
        fields["features"] = fields["features"][:, :-1]
    with open(path, "wb") as handle:
        np.savez(handle, **fields)
    report = merge_shards(tmp_path / "cache")
    assert len(report.problems) == 1 and str(path) in report.problems[0]
    expected = {"identity": "another encoder identity", "stray key": "not in its shard's list",
                "dimension": "-d embeddings"}[damage]
    assert expected in report.problems[0]
    assert report.merged_images == 12 - len(fields["keys"])
    assert not path.exists() and path.with_name(f"rejected-{path.name}").exists()  # set aside, kept to look at
    outcome = run_shard(plan.folder, 0)  # the shard no longer counts that batch: it embeds those images again
    assert outcome.extracted == len(fields["keys"])  # (a stray key stands for an image of the list: it is redone)
    again = merge_shards(tmp_path / "cache")
    assert not again.problems
    cached = extract_embeddings(load_dataset(manifest), resolve_encoder("pixels-32"), cache_dir=tmp_path / "cache",
                                cached_only=True)
    assert len(cached.rows) == 12 and not cached.pending


def test_a_node_local_path_is_refused_and_a_local_disk_warned_before_submitting():
    from otolith_core.cluster import storage_problems

    mounts = "\n".join(["overlay / overlay rw 0 0", "tmpfs /scratch/local tmpfs rw 0 0",
                        "server:/export /shared nfs4 rw 0 0", "/dev/sda1 /data ext4 rw 0 0"])
    errors, warnings = storage_problems({"the cache folder": "/shared/otoliths/cache", "the data": "/data/cod.csv",
                                         "the weights folder": "/scratch/local/hf"}, mounts=mounts)
    assert len(errors) == 1 and "/scratch/local/hf" in errors[0] and "tmpfs" in errors[0]
    assert len(warnings) == 1 and "/data/cod.csv" in warnings[0] and "ext4" in warnings[0]


def test_cluster_settings_name_an_unknown_key(tmp_path):
    from otolith_core.cluster import read_cluster_config

    (tmp_path / "cluster.toml").write_text('partition = "gpu"\ngpus_per_task = 1\npartiton = "typo"\n')
    with pytest.raises(ValueError, match="unknown setting.*partiton"):
        read_cluster_config(tmp_path / "cluster.toml")
    (tmp_path / "cluster.toml").write_text('partition = "gpu"\ngpus_per_task = "1"\n')
    with pytest.raises(ValueError, match="gpus_per_task must be a whole number"):
        read_cluster_config(tmp_path / "cluster.toml")
    (tmp_path / "cluster.toml").write_text('partition = 7\n')
    with pytest.raises(ValueError, match="partition must be text"):
        read_cluster_config(tmp_path / "cluster.toml")
    (tmp_path / "cluster.toml").write_text('partition = "gpu"\ngpus_per_task = 1\nmem_gb = 32\n')
    assert read_cluster_config(tmp_path / "cluster.toml").gpus_per_task == 1


def test_a_missing_scheduler_library_says_what_to_install(demo_manifest, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    code = main(["extract", "--data", str(demo_manifest), "--model", "pixels-32", "--cache-dir", str(tmp_path),
                 "--shards", "2", "--executor", "slurm"])
    assert code == 2 and "otolith-dashboard[slurm]" in capsys.readouterr().err


@pytest.mark.slow
def test_a_slurm_array_through_submitits_local_cluster_then_one_shard_by_hand(demo_manifest, tmp_path, capsys):
    """The `--executor slurm` code path with submitit's local cluster (each array task a process here): submitted,
    waited for, merged; the plan's shard run again by hand (`--shard I/N`) finds nothing left to do.

    The built-in pixels-32 keeps the array's processes to the executor's own work: a ViT would add torch's import
    (9 CPU-s here) to each. A ViT's shards in processes of their own are
    test_vit_shards_killed_and_rerun_merge_into_what_one_process_extracts's."""
    manifest = _manifest(demo_manifest, tmp_path, rows=30)
    (tmp_path / "cluster.toml").write_text('slurm_cluster = "local"\ntime_minutes = 10\ncpus_per_task = 1\n')
    command = ["extract", "--data", str(manifest), "--model", "pixels-32", "--cache-dir", str(tmp_path / "cache")]
    assert main([*command, "--shards", "2", "--executor", "slurm", "--cluster-config",
                 str(tmp_path / "cluster.toml")]) == 0
    out = capsys.readouterr().out
    assert "30 images to extract in 2 shards" in out and "merged 30 images" in out and "slurm job" in out
    assert main([*command, "--shard", "1/2"]) == 0
    assert "0 now" in capsys.readouterr().out
    assert main(["shards", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert capsys.readouterr().out.count(", done,") == 2
    merged = extract_embeddings(load_dataset(manifest), resolve_encoder("pixels-32"), cache_dir=tmp_path / "cache")
    assert merged.n_extracted == 0
    _assert_same(merged, _one_process(manifest, "pixels-32", tmp_path / "single"))


@pytest.mark.slow
def test_ray_tasks_on_a_local_ray_instance_merge_into_what_one_process_extracts(demo_manifest, tmp_path):
    """`--executor ray` on a local Ray instance, its tasks in Ray's worker processes; pixels-32, as in the SLURM test
    above."""
    manifest = _manifest(demo_manifest, tmp_path, rows=12)
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    run = subprocess.run([sys.executable, "-m", "otolith_core.cli", "extract", "--data", str(manifest), "--model",
                          "pixels-32", "--cache-dir", str(tmp_path / "cache"), "--shards", "2", "--executor", "ray"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ray job" in run.stdout and "merged 12 images" in run.stdout
    merged = extract_embeddings(load_dataset(manifest), resolve_encoder("pixels-32"), cache_dir=tmp_path / "cache")
    assert merged.n_extracted == 0
    _assert_same(merged, _one_process(manifest, "pixels-32", tmp_path / "single"))


def test_a_cluster_without_the_weights_or_on_node_local_storage_gets_nothing_submitted(demo_manifest, tmp_path,
                                                                                      capsys):
    (tmp_path / "cluster.toml").write_text('slurm_cluster = "slurm"\n')
    code = main(["extract", "--data", str(demo_manifest), "--model", "pixels-32", "--cache-dir",
                 str(tmp_path / "cache"), "--shards", "2", "--executor", "slurm", "--cluster-config",
                 str(tmp_path / "cluster.toml")])
    err = capsys.readouterr().err
    assert code == 2 and "only this machine sees" in err and "nothing submitted" in err  # pytest's folder is in /tmp
    assert not (tmp_path / "cache" / "shards").exists()


@pytest.mark.slow
def test_a_sharded_extraction_job_cancelled_stops_its_shards_and_a_restart_finishes_the_rest(demo_manifest, tmp_path):
    """The dashboard's way: an extraction job in 2 local shards, cancelled once a shard has written a batch: the
    job ends cancelled with its shards stopped and their whole batches merged; started again, it extracts only
    the rest. Its record lists each shard."""
    from otolith_core.cluster import _alive, submitted
    from otolith_core.embeddings import cached_count
    from otolith_core.encoders import registry
    from otolith_core.jobs import ExtractionRequest, cancel_job, read_job, start_job
    from otolith_core.shards import read_plan

    manifest = _manifest(demo_manifest, tmp_path, rows=16)
    cache = tmp_path / "cache"
    request = ExtractionRequest(str(manifest), "otolith-morphometrics", batch_size=2, shards=2)
    job = start_job(request, cache)
    deadline = time.time() + 180
    while not list(cache.glob("shards/*/shard-*/batch-*.npz")) and time.time() < deadline:
        time.sleep(0.05)
    cancel_job(cache, job.id)
    while read_job(cache, job.id).active and time.time() < deadline:
        time.sleep(0.1)
    ended = read_job(cache, job.id)
    assert ended.state == "cancelled", ended
    plan = read_plan(next(cache.glob("shards/*/plan.json")).parent)
    assert [t.index for t in submitted(plan)] == [0, 1]
    assert not any(t.job_id and _alive(t) for t in submitted(plan))
    assert [s["index"] for s in ended.shards] == [0, 1]
    data = load_dataset(manifest)
    kept = cached_count(data, registry()["otolith-morphometrics"], cache_dir=cache)
    assert 0 < kept < 16  # the whole batches were merged when it stopped
    start_job(request, cache)
    while read_job(cache, job.id).active and time.time() < deadline + 180:
        time.sleep(0.1)
    final = read_job(cache, job.id)
    assert final.state == "finished" and final.outcome == {"embedded": 16, "extracted": 16 - kept}, final
    assert "in 2 shards (local)" in final.request.label() and {s["state"] for s in final.shards} == {"finished"}


@pytest.mark.slow
def test_local_shards_beyond_the_workers_wait_for_a_free_one(demo_manifest, tmp_path):
    from otolith_core.cluster import submit, submitted

    manifest = _manifest(demo_manifest, tmp_path, rows=15)
    plan = plan_shards(load_dataset(manifest), "pixels-32", cache_dir=tmp_path / "cache", n_shards=3)
    submission = submit(plan, "local", workers=2)
    assert sorted(submission.poll().values()) == ["pending", "running", "running"]
    assert [t.job_id != "" for t in submitted(plan)] == [True, True, False]
    assert submission.wait(every=0.1) == {}
    assert all(state.done for state in shard_states(plan)) and all(t.job_id for t in submitted(plan))
    assert merge_shards(tmp_path / "cache").merged_images == 15


def test_a_shard_that_cannot_read_an_image_names_it_and_the_rest_are_merged(demo_manifest, tmp_path):
    """A photo that a node does not see (here: gone after planning) is named by its shard, and the merge keeps the
    reason in the cache beside the other nine images' embeddings."""
    import shutil

    table = pd.read_csv(demo_manifest).head(10)
    shutil.copytree(demo_manifest.parent / "images", tmp_path / "images")
    table.to_csv(tmp_path / "manifest.csv", index=False)
    data = load_dataset(tmp_path / "manifest.csv")
    plan = plan_shards(data, "pixels-32", cache_dir=tmp_path / "cache", n_shards=1)
    gone = data.records[3].path
    gone.unlink()
    outcome = run_shard(plan.folder, 0)
    assert (outcome.embedded, outcome.failed) == (9, 1)
    failed = [(key, why) for path in plan.shard_folder(0).glob("batch-*.npz")
              for key, why in zip(read_batch(path).failed, read_batch(path).reasons)]
    assert len(failed) == 1 and gone.name in failed[0][1], failed  # the shard's reason names the file
    assert merge_shards(tmp_path / "cache").failed_images == 1
    from otolith_core.cache import EmbeddingStore

    store = EmbeddingStore(tmp_path / "cache", resolve_encoder("pixels-32"))
    try:
        assert store.failure(failed[0][0]) == failed[0][1] and len(store) == 9  # the reason is kept in the cache
    finally:
        store.close()


def test_a_preempted_or_timed_out_slurm_task_is_requeued_as_the_same_shard():
    """Before a preemption or the time limit SLURM signals the task; submitit then calls ``checkpoint`` and requeues
    what it returns: the same shard of the same plan, which goes on after its last whole batch (the resume itself
    is the SIGKILL test above). A real preemption needs a SLURM cluster: not simulated here."""
    import submitit

    from otolith_core.cluster import _SubmititShard

    task = _SubmititShard("/shared/otolith-cache/shards/0123456789abcdef")
    again = task.checkpoint(3)
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert isinstance(again.function, _SubmititShard) and again.function.folder == task.folder and again.args == (3,)


def test_a_data_folder_and_its_manifest_name_the_same_plan_and_a_shard_runs_once_at_a_time(demo_manifest, tmp_path):
    from filelock import FileLock

    from otolith_core.shards import ShardBusy, find_plan

    plan = plan_shards(load_dataset(demo_manifest.parent), "pixels-32", cache_dir=tmp_path / "cache", n_shards=2)
    for data in (demo_manifest.parent, demo_manifest):  # `--data DIR` on one machine, `--data DIR/manifest.csv` on another
        assert find_plan(tmp_path / "cache", data, "pixels-32", {}, "auto", 2).folder == plan.folder
    with pytest.raises(FileNotFoundError, match="pixels-32 on .* 2 shards"):  # names the plans that exist
        find_plan(tmp_path / "cache", demo_manifest, "pixels-32", {}, "auto", 3)
    with FileLock(str(plan.shard_folder(0) / ".lock")):  # another run of shard 0 holds it
        with pytest.raises(ShardBusy, match="shard 0 .* another process"):
            run_shard(plan.folder, 0)


def test_no_wait_is_refused_for_local_shards_and_shard_options_need_shards(demo_manifest, tmp_path, capsys):
    command = ["extract", "--data", str(demo_manifest), "--model", "pixels-32", "--cache-dir", str(tmp_path)]
    assert main([*command, "--shards", "2", "--no-wait"]) == 2
    assert "--no-wait is for a cluster's scheduler" in capsys.readouterr().err
    assert main([*command, "--executor", "slurm", "--plan-only"]) == 2
    assert "--executor, --plan-only go(es) with --shards N" in capsys.readouterr().err


def test_weights_not_on_this_machine_stop_a_cluster_submission(demo_manifest, tmp_path, offline_hub, monkeypatch,
                                                               capsys):
    """Compute nodes are often offline: a hub encoder whose weights are not in --weights-dir is named before
    anything is planned or submitted."""
    (tmp_path / "cluster.toml").write_text('slurm_cluster = "slurm"\n')
    code = main(["extract", "--data", str(demo_manifest), "--model", "clip-vit-l-14-336", "--cache-dir",
                 str(tmp_path / "cache"), "--weights-dir", str(tmp_path / "hf"), "--shards", "2", "--executor",
                 "slurm", "--cluster-config", str(tmp_path / "cluster.toml")])
    err = capsys.readouterr().err
    assert code == 2 and "weights of clip-vit-l-14-336 are not on this machine" in err and "--weights-dir" in err
    assert not (tmp_path / "cache" / "shards").exists()


@pytest.mark.slow
def test_a_shards_process_imports_no_pandas_nor_scipy_signal(demo_manifest, tmp_path):
    """A shard's process, as every executor starts it (the plan's command), embeds the images its plan lists. It
    reads no manifest, so it imports no pandas (0.6 s of CPU at its start), nor ``scipy.signal`` for the
    morphometrics' peak count (0.9 s), nor torch for a built-in extractor."""
    manifest = _manifest(demo_manifest, tmp_path, rows=4)
    plan = plan_shards(load_dataset(manifest), "otolith-morphometrics", cache_dir=tmp_path / "cache", n_shards=1)
    command = plan.shard_command(0)
    assert command[1:3] == ["-m", "otolith_core.cli"]
    code = ("import runpy, sys; sys.argv = ['otolith'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('otolith_core.cli', run_name='__main__')\n"
            "finally:\n    print('IMPORTED', *sorted({'pandas', 'scipy.signal', 'torch'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code, *command[3:]], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "4 of 4 images embedded" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "IMPORTED"


def test_a_plan_for_your_own_job_script_then_each_shard_by_hand_then_the_merge(demo_manifest, tmp_path, capsys):
    manifest = _manifest(demo_manifest, tmp_path, rows=12)
    command = ["extract", "--data", str(manifest), "--model", "pixels-32", "--cache-dir", str(tmp_path / "cache")]
    assert main([*command, "--shards", "2", "--plan-only"]) == 0
    out = capsys.readouterr().out
    assert "12 images to extract in 2 shards; nothing runs now" in out and "otolith_core.cli shard --plan" in out
    assert not list((tmp_path / "cache").glob("shards/*/shard-*/batch-*.npz"))
    for index in (0, 1):
        assert main([*command, "--shard", f"{index}/2"]) == 0
    assert main(["merge", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "merged 12 images" in capsys.readouterr().out
    _assert_same(_one_process(manifest, "pixels-32", tmp_path / "cache"),
                 _one_process(manifest, "pixels-32", tmp_path / "single"))
