"""Streaming pipeline on small generated JPEG folders (no TensorFlow needed)."""
import importlib.util
import os

import numpy as np
import pytest

# The data tests' helpers (tests use --import-mode=importlib, so conftest cannot be imported).
_spec = importlib.util.spec_from_file_location(
    "data_helpers", os.path.join(os.path.dirname(__file__), "conftest.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)
stream_config, make, take, CountingRecords = (helpers.stream_config, helpers.make, helpers.take,
                                              helpers.CountingRecords)
SIZE = 32  # small crops keep the tests fast; the ops are size-agnostic


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    helpers.write_folder(str(root / "train"), ("a", "b", "c"), per_class=8, size=(50, 40))
    helpers.write_folder(str(root / "val"), ("a", "b", "c"), per_class=3, size=(50, 40), seed=1)
    return str(root)


def test_folder_train_batches_shapes_reproducible_and_resumable(tree):
    p = make(stream_config(path=tree))
    assert (p.num_train_examples, p.num_eval_examples, p.num_classes) == (24, 9, 3)
    assert p.steps_per_epoch == 3 and p.image_shape == (SIZE, SIZE, 3)
    run = take(p.train_batches(0), 5)  # crosses an epoch boundary
    b = run[0]
    assert b["image"].shape == (8, SIZE, SIZE, 3) and b["image"].dtype == np.uint8
    assert b["label"].dtype == np.int32 and set(b.keys()) == {"image", "label"}
    again = take(make(stream_config(path=tree)).train_batches(0), 5)
    resumed = take(make(stream_config(path=tree)).train_batches(2), 3)
    for x, y in zip(run, again, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
    for x, y in zip(run[2:], resumed, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    # with_seed: the stream of a pipeline built with that seed (replicas read it), its own
    other = take(p.with_seed(1).train_batches(0), 2)
    for x, y in zip(other, take(make(stream_config(path=tree), seed=1).train_batches(0), 2)):
        np.testing.assert_array_equal(x["image"], y["image"])
    assert not np.array_equal(other[0]["image"], run[0]["image"]) and p.seed == 0
    # Epoch 0 reads every training file once, each with its own label.
    counted = make(stream_config(path=tree))
    counted.splits.train = counting = CountingRecords(counted.splits.train)
    labels = np.concatenate([b["label"] for b in take(counted.train_batches(0), 3)])
    assert sorted(counting.reads) == list(range(24))
    np.testing.assert_array_equal(labels, counted.splits.train.records.labels[counting.reads])


def test_two_processes_read_disjoint_rows_of_the_global_batch(tree):
    cfg = stream_config(path=tree, train_augment="none")
    glob = take(make(cfg).train_batches(1), 2)
    parts = [take(make(cfg, pi=i, pc=2).train_batches(1), 2) for i in range(2)]
    for s in range(2):
        for key in ("image", "label"):
            np.testing.assert_array_equal(
                np.concatenate([parts[0][s][key], parts[1][s][key]]), glob[s][key])


def test_folder_eval_modes_cover_every_example_once(tree):
    masks = []
    for pi in range(2):
        batches = list(make(stream_config(path=tree, eval_crops="10crop"), eval_batch=4,
                            pi=pi, pc=2).eval_batches())
        assert len(batches) == 3  # ceil(9 / 4) global batches, 2 rows each per process
        assert batches[0]["image"].shape == (2, 10, SIZE, SIZE, 3)
        masks.append(np.concatenate([b["mask"] for b in batches]))
    assert sum(m.sum() for m in masks) == 9
    ms = make(stream_config(path=tree, eval_crops="multiscale"))
    assert ms.eval_scales == (32, 48)
    scalar = make(stream_config(path=tree, normalize="channel_mean_scalar_std"))
    assert ms.std.shape == (3,) and scalar.std.shape == () and scalar.std == ms.std.mean()
    # eval_batches zips the scales: one batch holds the views of both, same rows and masks.
    both = list(ms.eval_batches())
    assert [tuple(x.shape for x in b["image"]) for b in both][0] == (
        (4, 2, 32, 32, 3), (4, 2, 48, 48, 3))
    assert sum(b["mask"].sum() for b in both) == 9
    alone = make(stream_config(path=tree, eval_crops="multiscale", multiscale_sizes=(48,)))
    np.testing.assert_array_equal(both[0]["image"][1], next(alone.eval_batches())["image"][0])


def test_device_preprocess_applies_imagenet_normalization_and_lighting(tree):
    import jax
    p = make(stream_config(path=tree))
    grey = np.full((4, SIZE, SIZE, 3), 124, np.uint8)
    ev = np.asarray(p.device_preprocess(None, grey, False))
    np.testing.assert_allclose(ev[0, 0, 0], (124 - np.array([123.675, 116.28, 103.53]))
                               / np.array([58.395, 57.12, 57.375]), rtol=1e-4)
    tr = np.asarray(p.device_preprocess(jax.random.key(0), grey, True))
    assert 0 < np.abs(tr - ev).max() < 0.5  # lighting shifts colours by a few grey levels


def test_streaming_run_stopped_by_sigterm_and_resumed_equals_one_uninterrupted(tree, tmp_path):
    """The loop's streaming path: batches prefetched to the devices; a run of 2 steps per
    dispatch stopped by SIGTERM after step 2 and resumed (a new pipeline opened where it stopped)
    ends with the parameters of an uninterrupted run of 1 step per dispatch, bitwise; and
    multi-scale eval covers each example once.

    Slow: three streaming runs (uninterrupted, stopped, resumed) and a multi-scale evaluation.
    """
    import os
    import signal

    import jax

    from resnet_jax.config import load_config
    from resnet_jax.train import loop

    def config(k):
        return load_config("configs/smoke.py:steps=4", [
            "--config.data.pipeline=streaming", "--config.data.source=folder",
            f"--config.data.path={tree}", "--config.data.num_val_examples=0",
            "--config.data.image_size=16",
            "--config.data.eval_resize=20", "--config.data.normalize=per_channel",
            "--config.data.train_augment=inception", "--config.data.eval_crops=multiscale",
            "--config.data.multiscale_sizes=(16, 24)", "--config.data.prefetch=1",
            "--config.train.batch_size=8", "--config.train.eval_batch_size=8",
            f"--config.train.steps_per_dispatch={k}", "--config.train.log_every_steps=4"])

    def params(name):
        return jax.tree.leaves(jax.device_get(loop.load_trained(str(tmp_path / name))[2]))

    one = loop.train_and_evaluate(config(1), str(tmp_path / "k1"))

    def preempt(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = loop.train_and_evaluate(config(2), str(tmp_path / "k2"), on_step=preempt)
    # On CPU the signal also ends the next dispatch between its steps: a resume mid-chunk.
    assert stopped["preempted"] and 2 <= stopped["step"] < 4
    two = loop.train_and_evaluate(config(2), str(tmp_path / "k2"))
    for a, b in zip(params("k1"), params("k2"), strict=True):
        np.testing.assert_array_equal(a, b)
    assert one["final"] == two["final"] and one["steps"] == 4
    summary = loop.evaluate(*loop.restore_for_eval(str(tmp_path / "k1"))[:2])
    assert summary["count"] == 9  # the 9 validation images, once, over both scales
    assert summary["top1_error"] == pytest.approx(one["final"]["top1_error"])


def test_train_chunk_reads_on_and_reopens_where_asked(tree):
    """The loop's interface: chunks of consecutive steps are the stream's batches stacked; a
    chunk that does not follow on opens the stream at its step (a resume)."""
    ref = take(make(stream_config(path=tree)).train_batches(0), 5)
    p = make(stream_config(path=tree))
    first, second = p.train_chunk(0, 2), p.train_chunk(2, 3)
    assert first["image"].shape == (2, 8, SIZE, SIZE, 3) and second["label"].shape == (3, 8)
    got = [{k: c[k][i] for k in c} for c in (first, second) for i in range(len(c["label"]))]
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    again = p.train_chunk(1, 1)
    np.testing.assert_array_equal(again["image"][0], ref[1]["image"])
    p.close()


# ---- issue 17: the batch of a step is a function of (seed, step) and the data --------------

def test_a_resume_deep_in_an_epoch_reads_only_its_own_chunk(tree):
    p = make(stream_config(path=tree), batch=4)  # 6 steps per epoch
    counting = CountingRecords(p.splits.train)
    p.splits.train = counting
    chunk = p.train_chunk(10, 2)  # epoch 1, its 5th and 6th steps
    assert len(counting.reads) == 2 * 4  # one chunk's examples, nothing before them
    want = p.plan.permutation(1)[4 * 4:6 * 4]
    assert sorted(counting.reads) == sorted(want.tolist())
    ref = take(make(stream_config(path=tree), batch=4).train_batches(0), 12)
    for i in range(2):
        np.testing.assert_array_equal(chunk["image"][i], ref[10 + i]["image"])
    p.close()


def test_worker_processes_and_process_count_do_not_change_the_batches(tree):
    """2 worker processes == in-process, and 2 processes' rows == the 1-process global batch,
    with the scale augmentation, across an epoch boundary."""
    cfg = stream_config(path=tree, train_augment="scale")
    ref = take(make(cfg).train_batches(1), 4)
    workers = make(stream_config(path=tree, train_augment="scale", workers=2))
    got = [workers.train_chunk(1, 2), workers.train_chunk(3, 2)]
    workers.close()
    for s in range(4):
        np.testing.assert_array_equal(got[s // 2]["image"][s % 2], ref[s]["image"])
        np.testing.assert_array_equal(got[s // 2]["label"][s % 2], ref[s]["label"])
    parts = [take(make(cfg, pi=i, pc=2).train_batches(1), 4) for i in range(2)]
    for s in range(4):
        for key in ("image", "label"):
            np.testing.assert_array_equal(
                np.concatenate([parts[0][s][key], parts[1][s][key]]), ref[s][key])


def test_close_is_idempotent_joins_the_workers_and_a_later_chunk_says_so(tree):
    import multiprocessing
    p = make(stream_config(path=tree, workers=2))
    p.train_chunk(0, 1)
    p.close()
    p.close()
    assert not [c for c in multiprocessing.active_children() if c.is_alive()]
    with pytest.raises(RuntimeError, match=r"train_chunk\(1, 1\) after close"):
        p.train_chunk(1, 1)


@pytest.mark.parametrize("reading", ["train", "eval"])
def test_workers_leave_sigterm_to_the_training_process(tree, monkeypatch, reading):
    """A preemption signals every process (systemd at a VM's shutdown, SLURM): the workers
    must not die of it, or the run fails reading its next batch instead of saving. The first
    workers are signalled the moment they are spawned (before `init_worker` runs in
    them: they die, the stream reads on with new ones from where it stopped), and all are
    signalled again once the run is reading (they must ignore it).

    Slow: a streaming run whose grain worker processes are signalled (real processes are what is
    tested).
    """
    import multiprocessing
    import multiprocessing.context
    import os
    import signal
    start = multiprocessing.context.SpawnProcess.start
    spawned = []

    def start_then_sigterm(self):
        start(self)
        spawned.append(self.pid)
        if len(spawned) <= 2:
            os.kill(self.pid, signal.SIGTERM)

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", start_then_sigterm)
    if reading == "eval":
        cfg = stream_config(path=tree, eval_crops="10crop")
        ref = [b["image"] for b in make(cfg, eval_batch=2).eval_batches()]
        p = make(stream_config(path=tree, eval_crops="10crop", workers=2), eval_batch=2)
        got = [b["image"] for b in p.eval_batches()]
        p.close()  # its evaluation workers wait for the next evaluation until then
        assert len(spawned) > 2 and len(got) == len(ref)
        for a, b in zip(got, ref, strict=True):
            np.testing.assert_array_equal(a, b)
        return
    ref = take(make(stream_config(path=tree)).train_batches(0), 6)
    p = make(stream_config(path=tree, workers=2))
    first = p.train_chunk(0, 1)
    children = [c.pid for c in multiprocessing.active_children()]
    assert len(spawned) > 2 and len(children) >= 2
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    rest = p.train_chunk(1, 5)  # more than the workers had made ahead
    p.close()
    np.testing.assert_array_equal(first["image"][0], ref[0]["image"])
    for i in range(5):
        np.testing.assert_array_equal(rest["image"][i], ref[i + 1]["image"])


def test_eval_split_missing_a_class_is_labelled_by_the_training_class_names(tmp_path, helpers):
    helpers.write_folder(str(tmp_path / "train"), ("a", "b", "c"), per_class=4, size=(40, 40))
    helpers.write_folder(str(tmp_path / "val"), ("a", "c"), per_class=2, size=(40, 40))
    p = make(stream_config(path=str(tmp_path), train_augment="none"), batch=4, eval_batch=4)
    assert p.class_names == ["a", "b", "c"]
    labels = np.concatenate([b["label"][b["mask"]] for b in p.eval_batches()])
    assert sorted(labels.tolist()) == [0, 0, 2, 2]  # 'c' is class 2 of training, not 1


def test_eval_views_are_the_corners_centre_and_mirrors_of_the_resized_image(tree):
    """The streaming eval views against their definition, written here with Pillow, numpy and
    OpenCV (not with `data.views`, which the pipeline calls). 10crop: the image resized to
    shorter side 40 (the 40x50 images are not resampled), its 4 corners and centre 32 x 32,
    then the same mirrored; multiscale 48: the image resized bilinearly (half-pixel centres)
    to 48x60, its centre 48 x 48 and that mirrored (within one level: another resampler)."""
    import cv2
    from PIL import Image
    ten = make(stream_config(path=tree, eval_crops="10crop"), eval_batch=4)
    ms = make(stream_config(path=tree, eval_crops="multiscale", multiscale_sizes=(48,)),
              eval_batch=4)
    batch, scaled = next(ten.eval_batches()), next(ms.eval_batches())
    for row in range(4):
        path = ten.splits.eval.name(row)
        img = np.asarray(Image.open(path).convert("RGB"))
        assert img.shape == (40, 50, 3)
        crops = [img[:32, :32], img[:32, 18:], img[8:, :32], img[8:, 18:], img[4:36, 9:41]]
        want = np.stack(crops + [c[:, ::-1] for c in crops])
        np.testing.assert_array_equal(batch["image"][row], want)
        square = cv2.resize(img, (60, 48), interpolation=cv2.INTER_LINEAR)[:, 6:54]
        got = scaled["image"][0][row].astype(int)
        assert np.abs(got - np.stack([square, square[:, ::-1]])).max() <= 1
        assert batch["label"][row] == ten.class_names.index(os.path.basename(os.path.dirname(path)))
