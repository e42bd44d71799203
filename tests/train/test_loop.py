"""A whole training job on a tiny model (cifar_resnet8, width 4, 16x16 synthetic) and what it
leaves: the workdir's files, eval reproducing the run's numbers, dispatches cut at the right
steps, and bad input refused before anything is written. Runs stopped and resumed:
test_loop_resume.py; non-finite numbers: test_loop_non_finite.py."""
import io
import json
import os
from contextlib import redirect_stdout

import pytest

from resnet_jax import cli
from resnet_jax.config import load_config
from resnet_jax.train import checkpoint as ckpt_lib
from resnet_jax.train import feed, loop
from resnet_jax.train.logging import ROW_FIELDS, read_metrics


def test_workdir_files_parse(helpers, finished):
    workdir, results = finished
    rows = read_metrics(workdir)
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    assert [r["step"] for r in train] == [2, 4, 6, 8] and [r["step"] for r in val] == [4, 8]
    assert set(ROW_FIELDS) <= set(train[0])
    assert all(0.0 <= r["top1_error"] <= 100.0 and r["top5_error"] <= r["top1_error"] for r in rows)
    assert train[0]["lr"] == pytest.approx(0.1) and train[-1]["lr"] == pytest.approx(0.01)
    on_disk = json.loads(open(os.path.join(workdir, "results.json")).read())
    assert on_disk == json.loads(json.dumps(results))
    assert on_disk["model"] == "cifar_resnet8" and on_disk["steps"] == 8
    assert on_disk["final"]["top1_error"] == val[-1]["top1_error"]
    assert on_disk["best"]["top1_error"] == min(r["top1_error"] for r in val)
    assert on_disk["params"] > 0 and on_disk["macs"] > 0
    events = os.listdir(os.path.join(workdir, "tb"))
    assert events and os.path.getsize(os.path.join(workdir, "tb", events[0])) > 0
    saved = loop.read_config(workdir)
    assert saved.to_dict() == load_config(helpers.SMOKE).to_dict()


def test_eval_command_reproduces_final_numbers(finished):
    workdir, results = finished
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["eval", "--workdir", workdir, "--json"]) == 0
    evaluated = json.loads(out.getvalue().strip().splitlines()[-1])
    assert evaluated["step"] == 8 and evaluated["crops"] == "center"
    assert (evaluated["source"], evaluated["count"]) == ("run", 64)
    for key in ("top1_error", "top5_error", "loss"):
        assert evaluated[key] == results["final"][key]
    saved = json.loads(open(os.path.join(workdir, "eval", "run-validation-center.json")).read())
    assert saved == evaluated


def test_eval_of_the_best_checkpoint_and_views_an_in_memory_run_cannot_give(finished, capsys):
    workdir, results = finished
    assert cli.main(["eval", "--workdir", workdir, "--checkpoint", "best", "--json"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert best["step"] == results["best"]["step"] == 4
    assert best["top1_error"] == results["best"]["top1_error"]
    assert best["loss"] == results["best"]["loss"]
    assert cli.main(["eval", "--workdir", workdir, "--crops", "10crop"]) == 2
    assert "score image files with --data" in capsys.readouterr().err


def test_eval_of_the_validation_images_as_files_gives_the_same_numbers(finished, tmp_path, capsys):
    """`eval --data` (Pillow decode, the run's saved preprocessing, its own batching) on the
    run's validation images written as PNG files scores exactly as the run's evaluation."""
    from PIL import Image
    from resnet_jax import data as data_lib
    workdir, results = finished
    config = loop.read_config(workdir)
    pipeline = data_lib.make_pipeline(config.data, global_batch_size=32, eval_batch_size=32,
                                      seed=config.seed)
    for i, (image, label) in enumerate(zip(*pipeline.eval_arrays, strict=True)):
        folder = tmp_path / "val" / "test" / pipeline.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    assert cli.main(["eval", "--workdir", workdir, "--data", str(tmp_path / "val"),
                     "--batch-size", "24", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert (evaluated["count"], evaluated["split"], evaluated["step"]) == (64, "test", 8)
    for key in ("top1_error", "top5_error"):
        assert evaluated[key] == results["final"][key]
    assert evaluated["loss"] == pytest.approx(results["final"]["loss"], rel=1e-5)


def test_workdir_of_another_model_is_refused_untouched(finished):
    workdir, _ = finished
    before = open(os.path.join(workdir, "config.json")).read()
    config = load_config("configs/smoke.py:depth=14")
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="cifar_resnet8.*cifar_resnet14"):
        loop.train_and_evaluate(config, workdir)
    assert open(os.path.join(workdir, "config.json")).read() == before


def test_batch_not_divisible_by_devices(helpers, tmp_path):
    config = load_config(helpers.SMOKE, ["--config.train.batch_size=12"])
    with pytest.raises(ValueError, match="train.batch_size=12.*8 devices"):
        loop.train_and_evaluate(config, str(tmp_path))


def test_missing_data_directory(helpers, tmp_path):
    config = load_config(helpers.SMOKE, ["--config.data.source=tar",
                                 f"--config.data.path={tmp_path}/nope.tar.gz"])
    with pytest.raises(ValueError, match="data.path=.*nope.tar.gz.*does not exist"):
        loop.train_and_evaluate(config, str(tmp_path / "w"))
    config = load_config(helpers.SMOKE, [f"--config.data.data_dir={tmp_path}/missing"])
    with pytest.raises(ValueError, match="data.data_dir"):
        loop.train_and_evaluate(config, str(tmp_path / "w"))


STREAMING = ["--config.data.pipeline=streaming", "--config.data.train_augment=scale",
             "--config.data.eval_resize=20", "--config.data.normalize=per_channel"]


@pytest.mark.parametrize("pipeline", [[], STREAMING], ids=["in_memory", "streaming"])
def test_a_training_folder_of_one_class_is_one_line_before_anything_is_written(
        helpers, tmp_path, capsys, pipeline):
    """One class trained to loss 0.0000 and top-1 error 0.00%, exit 0."""
    from PIL import Image
    for split in ("train", "val"):
        os.makedirs(tmp_path / "data" / split / "cat")
        os.makedirs(tmp_path / "data" / split / "empty")  # no images: not a class
        for i in range(8):
            Image.new("RGB", (16, 16), (i, 0, 0)).save(
                tmp_path / "data" / split / "cat" / f"{i}.png")
    workdir = tmp_path / "run"
    rc = cli.main(["train", "--config", helpers.SMOKE, "--workdir", str(workdir),
                   "--config.data.source=folder", f"--config.data.path={tmp_path / 'data'}",
                   "--config.data.num_val_examples=0", "--config.train.batch_size=8",
                   "--config.train.eval_batch_size=8", *pipeline])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0] == (f"resnet-jax train: error: data.path={str(tmp_path / 'data')!r}: the "
                      "training split has 1 class (cat); a classifier needs at least 2 "
                      "(layout: train/<class>/<image>)"), err[0]
    assert not workdir.exists()


def test_chunks_are_aligned_to_boundaries(helpers):
    """Dispatches end at every eval and checkpoint step (their state is needed) and at the
    end; a log step needs only the per-step metrics, so it cuts nothing."""
    train = load_config(helpers.SMOKE, ["--config.train.steps_per_dispatch=4",
                                "--config.train.log_every_steps=3",
                                "--config.train.checkpoint_every_steps=6",
                                "--config.train.num_steps=11"]).train
    steps, step = [], 0
    while step < train.num_steps:
        k = feed.chunk_size(step, train)
        steps.append(k)
        step += k
    assert steps == [4, 2, 2, 3]  # cut at 4 (eval), 6 (checkpoint), 8 (eval), 11 (the end)
    # A run resumed at 6 dispatches exactly the rest of these chunks.
    assert list(feed.schedule(6, train)) == [(6, 2), (8, 3)]


def test_log_rows_inside_a_dispatch_are_those_of_single_steps(helpers, tmp_path):
    """Logs every 3 steps in dispatches of 4: rows at 3, 6 (inside dispatches) and at the
    evals, each the mean of its own steps, as a run of one step per dispatch logs them."""
    over = ["--config.train.log_every_steps=3"]
    rows = {}
    for k in (4, 1):
        workdir = str(tmp_path / f"k{k}")
        loop.train_and_evaluate(
            load_config(helpers.SMOKE, over + [f"--config.train.steps_per_dispatch={k}"]), workdir)
        rows[k] = helpers.rows(workdir)
    assert [(r["step"], r["split"]) for r in rows[4]] == [
        (3, "train"), (4, "val"), (6, "train"), (8, "train"), (8, "val")]
    assert rows[4] == rows[1]


def test_rerun_of_a_finished_run_adds_no_event_file(helpers, finished, tmp_path):
    import shutil
    workdir = str(tmp_path / "copy")
    shutil.copytree(finished[0], workdir)
    before = sorted(os.listdir(os.path.join(workdir, "tb")))
    loop.train_and_evaluate(load_config(helpers.SMOKE), workdir)
    assert sorted(os.listdir(os.path.join(workdir, "tb"))) == before


def test_eval_and_export_leave_a_save_in_progress_alone(finished, tmp_path, capsys):
    """Readers of a workdir whose run is saving right now: each opened the checkpoints as a
    writer, and orbax's cleanup of unfinished saves deleted the run's save in progress."""
    import shutil
    workdir = str(tmp_path / "copy")
    shutil.copytree(finished[0], workdir)
    in_progress = os.path.join(workdir, "checkpoints", "9.orbax-checkpoint-tmp")
    os.makedirs(os.path.join(in_progress, "state"))   # what orbax names a save under way
    assert loop.load_trained(workdir)[0] is not None
    assert cli.main(["eval", "--workdir", workdir, "--json"]) == 0
    assert cli.main(["export", "--workdir", workdir, "--out", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    assert os.path.isdir(os.path.join(in_progress, "state"))
