"""Streaming pipeline on small generated JPEG folders and tfds mock data."""
import ml_collections
import numpy as np
import pytest

pytest.importorskip("tensorflow")
from resnet_jax import data  # noqa: E402
from resnet_jax.data.decode import CorruptImageError  # noqa: E402

SIZE = 32  # small crops keep the tests fast; the ops are size-agnostic


def stream_config(**over):
    cfg = ml_collections.ConfigDict(dict(
        pipeline="streaming", source="folder", name="", path="", data_dir="",
        num_val_examples=0, train_augment="scale", image_size=SIZE, eval_resize=40,
        lighting_std=0.1, normalize="per_channel", eval_crops="center",
        multiscale_sizes=(32, 48), on_corrupt="error", shuffle_buffer=64,
        synthetic_examples=1, num_classes=0, prefetch=2))
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    import importlib.util
    import os
    spec = importlib.util.spec_from_file_location(
        "data_helpers", os.path.join(os.path.dirname(__file__), "conftest.py"))
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    root = tmp_path_factory.mktemp("folder")
    helpers.write_folder(str(root / "train"), ("a", "b", "c"), per_class=8, size=(50, 40))
    helpers.write_folder(str(root / "val"), ("a", "b", "c"), per_class=3, size=(50, 40), seed=1)
    return str(root)


def make(cfg, batch=8, eval_batch=4, seed=0, pi=0, pc=1):
    return data.make_pipeline(cfg, global_batch_size=batch, eval_batch_size=eval_batch,
                              seed=seed, process_index=pi, process_count=pc)


def take(it, n):
    return [next(it) for _ in range(n)]


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
    # Epoch 0 sees every training file once.
    labels = np.concatenate([r["label"] for r in run[:3]])
    assert list(np.bincount(labels)) == [8, 8, 8]


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
    b = next(ms.eval_batches_at(48))
    assert b["image"].shape == (4, 2, 48, 48, 3)
    with pytest.raises(ValueError, match="multiscale_sizes"):
        next(ms.eval_batches_at(40))
    # eval_batches zips the scales: one batch holds the views of both, same rows and masks.
    both = list(ms.eval_batches())
    assert [tuple(x.shape for x in b["image"]) for b in both][0] == (
        (4, 2, 32, 32, 3), (4, 2, 48, 48, 3))
    assert sum(b["mask"].sum() for b in both) == 9
    np.testing.assert_array_equal(both[0]["image"][1], b["image"])


def test_corrupt_file_is_named_or_skipped_and_counted(tmp_path, helpers):
    helpers.write_folder(str(tmp_path / "train"), ("a", "b"), per_class=4, size=(40, 40))
    helpers.write_folder(str(tmp_path / "val"), ("a", "b"), per_class=1, size=(40, 40))
    (tmp_path / "train" / "b" / "zz_bad.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage" * 10)
    cfg = stream_config(path=str(tmp_path), train_augment="none")
    with pytest.raises(CorruptImageError, match="zz_bad.jpg"):
        take(make(cfg, batch=9).train_batches(0), 1)
    p = make(stream_config(path=str(tmp_path), train_augment="none", on_corrupt="skip"),
             batch=1)
    batches = take(p.train_batches(0), 8)  # the 8 readable files of epoch 0
    assert p.num_skipped == 1 and all(b["image"].shape == (1, SIZE, SIZE, 3) for b in batches)
    assert sorted(int(b["label"][0]) for b in batches) == [0] * 4 + [1] * 4


def test_device_preprocess_applies_imagenet_normalization_and_lighting(tree):
    import jax
    p = make(stream_config(path=tree))
    grey = np.full((4, SIZE, SIZE, 3), 124, np.uint8)
    ev = np.asarray(p.device_preprocess(None, grey, False))
    np.testing.assert_allclose(ev[0, 0, 0], (124 - np.array([123.675, 116.28, 103.53]))
                               / np.array([58.395, 57.12, 57.375]), rtol=1e-4)
    tr = np.asarray(p.device_preprocess(jax.random.key(0), grey, True))
    assert 0 < np.abs(tr - ev).max() < 0.5  # lighting shifts colours by a few grey levels


def test_tfds_mock_data_sharded_padded_and_reproducible():
    tfds = pytest.importorskip("tensorflow_datasets")
    cfg = stream_config(source="tfds", name="imagenette", eval_crops="center")
    with tfds.testing.mock_data(num_examples=20):
        p = make(cfg, batch=4, eval_batch=6)
        assert p.num_classes == 10 and p.num_train_examples == 20
        a = take(p.train_batches(0), 6)
        b = take(make(cfg, batch=4, eval_batch=6).train_batches(3), 3)
        for x, y in zip(a[3:], b, strict=True):
            np.testing.assert_array_equal(x["image"], y["image"])
        assert a[0]["image"].shape == (4, SIZE, SIZE, 3)
        # mock_data serves every (sub)split in full, so only the plumbing is checkable here:
        # distinct even shards per process, each fully read, padded to a common batch count.
        counts, shards = [], []
        for pi in range(2):
            q = make(cfg, batch=4, eval_batch=6, pi=pi, pc=2)
            ev = list(q.eval_batches())
            counts.append(len(ev))
            shards.append((q.train_shard, q.eval_shard))
            assert sum(int(e["mask"].sum()) for e in ev) == q.tfds_eval_shard_sizes()[pi]
            assert ev[0]["image"].shape == (3, 1, SIZE, SIZE, 3)
            assert not ev[-1]["mask"][-1]  # 20 examples in batches of 3: the last row is padding
        assert counts[0] == counts[1] == 7  # ceil(20 / 3), the same everywhere
        assert shards[0][0] != shards[1][0] and shards[0][1] != shards[1][1]


def test_streaming_run_dispatches_k_steps_like_one_and_evaluates_multiscale(tree, tmp_path):
    """The loop's streaming path: batches prefetched to the devices, k steps per dispatch give
    the parameters of one step per dispatch, and multi-scale eval covers each example once."""
    import jax

    from resnet_jax.config import load_config
    from resnet_jax.train import loop

    def run(k, name):
        cfg = load_config("configs/smoke.py:steps=4", [
            "--config.data.pipeline=streaming", "--config.data.source=folder",
            f"--config.data.path={tree}", "--config.data.image_size=16",
            "--config.data.eval_resize=20", "--config.data.normalize=per_channel",
            "--config.data.train_augment=inception", "--config.data.eval_crops=multiscale",
            "--config.data.multiscale_sizes=(16, 24)", "--config.data.prefetch=1",
            "--config.train.batch_size=8", "--config.train.eval_batch_size=8",
            f"--config.train.steps_per_dispatch={k}", "--config.train.log_every_steps=4"])
        results = loop.train_and_evaluate(cfg, str(tmp_path / name))
        return results, jax.tree.leaves(jax.device_get(loop.load_trained(str(tmp_path / name))[2]))

    one, params_one = run(1, "k1")
    two, params_two = run(2, "k2")
    for a, b in zip(params_one, params_two, strict=True):
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
