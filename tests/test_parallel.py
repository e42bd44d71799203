"""Mesh, shardings, process-local -> global arrays, and BN group counts (8 fake CPU devices)."""
import jax
import numpy as np
import pytest

from resnet_jax import parallel


def test_mesh_axes_and_size():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data",)
    assert mesh.shape["data"] == jax.device_count() == 8
    assert parallel.make_mesh(2).shape["data"] == 2
    with pytest.raises(ValueError, match="num_devices=9"):
        parallel.make_mesh(9)


def test_to_global_splits_batch_contiguously():
    mesh = parallel.make_mesh()
    images = np.arange(16 * 2 * 2 * 3, dtype=np.uint8).reshape(16, 2, 2, 3)
    labels = np.arange(16, dtype=np.int32)
    batch = parallel.to_global({"image": images, "label": labels}, mesh)
    assert batch["image"].shape == (16, 2, 2, 3)
    np.testing.assert_array_equal(np.asarray(batch["label"]), labels)
    # Device i of the mesh holds rows [2i, 2i+2): the contract BN groups rely on.
    for i, dev in enumerate(mesh.devices.flat):
        shard = [s for s in batch["label"].addressable_shards if s.device == dev][0]
        np.testing.assert_array_equal(np.asarray(shard.data), labels[2 * i:2 * i + 2])


def test_to_global_stacked_batches_along_axis_1():
    mesh = parallel.make_mesh()
    idx = np.arange(3 * 8, dtype=np.int32).reshape(3, 8)
    out = parallel.to_global({"idx": idx}, mesh, batch_axis=1)["idx"]
    assert out.sharding.spec == jax.P(None, "data")
    assert out.addressable_shards[0].data.shape == (3, 1)
    np.testing.assert_array_equal(np.asarray(out), idx)


def test_to_global_rejects_uneven_batch():
    with pytest.raises(ValueError, match=r"batch\['label'\].*8 devices"):
        parallel.to_global({"label": np.zeros(12, np.int32)}, parallel.make_mesh())


def test_replicate_puts_full_copy_on_each_device():
    mesh = parallel.make_mesh()
    tree = parallel.replicate({"w": np.ones((2, 3), np.float32)}, mesh)
    assert tree["w"].sharding.is_fully_replicated
    assert len(tree["w"].addressable_shards) == 8
    assert all(s.data.shape == (2, 3) for s in tree["w"].addressable_shards)


@pytest.mark.parametrize("mode,size,expect", [("global", 1, 1), ("per_device", 1, 8),
                                              ("group", 2, 4), ("group", 8, 1)])
def test_bn_num_groups(mode, size, expect):
    assert parallel.bn_num_groups(mode, size, 8) == expect


def test_bn_num_groups_errors_name_field():
    with pytest.raises(ValueError, match="train.bn_mode='sync'.*global"):
        parallel.bn_num_groups("sync", 1, 8)
    with pytest.raises(ValueError, match="train.bn_group_size=3"):
        parallel.bn_num_groups("group", 3, 8)
