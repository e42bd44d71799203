"""Replicas at the step level, on 8 fake CPU devices: N nets in one compiled step (vmap over a
leading replica axis, or one replica after another) train as N solo runs would in every BN
mode, a non-finite replica is frozen while the others go on, evaluation scores each replica,
a padded scan compiles once for chunks of any length, and the checkpointer keeps each
replica's best.

The tiny model and helpers are test_step.py's (loaded from its file: the tests run with
--import-mode=importlib, where test modules do not import each other).

Tolerance: with vmap a replica is the solo run to float32 rounding, not bitwise: vmap turns
a convolution over N replicas into one grouped convolution (feature_group_count = N), which
XLA:CPU sums in another order. Measured here (cifar_resnet8 width 4, batch 16): after one step
the parameters differ by at most ~3e-7 and the losses by at most 1 ulp; the same bound as
8 devices against 1 (`assert_trees_close`: rtol 2e-5, atol 2e-6). Replica by replica
('sequential', what CPU runs take) it is bitwise the solo run.
"""
import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import parallel
from resnet_jax.train import checkpoint as ckpt_lib
from resnet_jax.train import dispatch as D
from resnet_jax.train import replicas
from resnet_jax.train import step as S


def _helpers():
    path = pathlib.Path(__file__).with_name("test_step.py")
    spec = importlib.util.spec_from_file_location("_test_step_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


T = _helpers()
N, K = 2, 3  # replicas, steps per dispatch


@functools.lru_cache(maxsize=None)
def init_states():
    """Two different step-0 states (host numpy): replica i from rbg key i."""
    return [jax.device_get(S.create_train_state(jax.random.key(i, impl="rbg"), T.model_for(),
                                                T.tx(), (T.HW, T.HW, 3))) for i in range(N)]


def keys():
    """Each replica's base key (stacked for the packed step)."""
    return [jax.random.key(7), jax.random.key(8)]


def replica_data(seed=0, k=K):
    """[replica][step] batches: each replica its own."""
    return [T.batches(k, seed=seed + 10 * i) for i in range(N)]


def packed_chunk(data, steps):
    """{'image': (k, N, B, ...), 'label': (k, N, B)} for the steps `steps` of each replica."""
    return {name: np.stack([np.stack([data[i][s][name] for s in steps]) for i in range(N)],
                           axis=1) for name in ("image", "label")}


@functools.lru_cache(maxsize=None)
def train_fn(groups=1, n=1, mode="vmap"):
    """The compiled python-loop step (one per BN grouping, replica count and mode, reused)."""
    return D.make_train_fn(T.model_for(groups), T.tx(), parallel.make_mesh(8),
                           preprocess=T.flip_preprocess, replicas=n, replica_mode=mode)


def solo(i, data, groups=1):
    mesh = parallel.make_mesh(8)
    state, m = train_fn(groups)(parallel.replicate(init_states()[i], mesh),
                                D.put_chunk(T.stack(data[i]), mesh), keys()[i])
    return jax.device_get(state), jax.device_get(m)


def packed(data, groups=1, nan_at=None, mode="vmap"):
    """The N replicas' steps in one program; `nan_at` (replica, step): a NaN in its data."""
    mesh = parallel.make_mesh(8)
    state = replicas.stack([parallel.replicate(s, mesh) for s in init_states()], mesh)
    host = packed_chunk(data, range(len(data[0])))
    if nan_at is not None:
        host["image"][nan_at[1], nan_at[0], 3, 0, 0, 0] = np.nan
    state, m = train_fn(groups, N, mode)(state, D.put_chunk(host, mesh, replicas=N),
                                         jnp.stack(keys()))
    return jax.device_get(state), jax.device_get(m)


@pytest.mark.parametrize("bn_mode,group_size,mode", [
    ("global", 1, "vmap"), ("per_device", 1, "vmap"), ("group", 2, "vmap"),
    ("group", 2, "sequential")])
def test_each_replica_trains_as_its_solo_run_in_every_bn_mode(bn_mode, group_size, mode):
    """Slow: compiles a packed step and a solo step for each BN mode."""
    groups = parallel.bn_num_groups(bn_mode, group_size, 8)
    data = replica_data()
    state, m = packed(data, groups, mode=mode)
    assert np.asarray(m["loss"]).shape == (K, N) and np.asarray(m["finite"]).all()
    for i in range(N):
        ref_state, ref_m = solo(i, data, groups)
        if mode == "sequential":     # the solo step on the replica's slice: bitwise
            jax.tree.map(np.testing.assert_array_equal, replicas.take(state, i), ref_state)
            jax.tree.map(np.testing.assert_array_equal,
                         {k: np.asarray(v)[:, i] for k, v in m.items()}, ref_m)
            continue
        T.assert_trees_close(replicas.take(state, i), ref_state)
        np.testing.assert_allclose(np.asarray(m["loss"])[:, i], ref_m["loss"], rtol=1e-5)
        np.testing.assert_allclose(np.asarray(m["top1"])[:, i], ref_m["top1"])
    # The replicas really differ (own init, own data): the check has teeth.
    assert abs(float(m["loss"][0, 0]) - float(m["loss"][0, 1])) > 1e-3


@pytest.mark.parametrize("mode", ["vmap", "sequential"])
def test_a_non_finite_replica_is_frozen_and_the_others_train_on(mode):
    """Slow: three packed runs of 2 replicas (clean, poisoned, one step)."""
    data = replica_data(seed=3)
    clean, clean_m = packed(data, mode=mode)
    state, m = packed(data, nan_at=(1, 1), mode=mode)    # replica 1: a NaN at step 1
    np.testing.assert_array_equal(np.asarray(m["finite"]), [[True, True], [True, False],
                                                            [True, False]])
    one_step, _ = packed([d[:1] for d in data], mode=mode)
    # Replica 1 kept its state after step 0 (and no more); replica 0 trained as if alone.
    jax.tree.map(np.testing.assert_array_equal, replicas.take(state, 1),
                 replicas.take(one_step, 1))
    jax.tree.map(np.testing.assert_array_equal, replicas.take(state, 0),
                 replicas.take(clean, 0))
    assert int(state.step[0]) == K and int(state.step[1]) == 1


def test_a_padded_scan_compiles_once_and_equals_single_steps():
    """Chunks of 2 and 1 steps padded to K run one compiled scan (unpadded, each chunk length
    compiled its own: the loop before; the count fails then), and the numbers are the single
    steps'. (The unpadded scan's numbers: test_step.py's scan test.)

    Slow: compiles a scan of K steps of 2 vmapped replicas, and their single steps.
    """
    data = replica_data(seed=5)
    ref, ref_m = packed(data)                              # K single steps (python loop)
    mesh = parallel.make_mesh(8)
    traced = []

    def counting(rng, images, train):
        traced.append(1)  # runs when the step is traced: once per compilation
        return T.flip_preprocess(rng, images, train)

    fn = D.make_train_fn(T.model_for(), T.tx(), mesh, preprocess=counting, loop="scan",
                         replicas=N)
    state = replicas.stack([parallel.replicate(s, mesh) for s in init_states()], mesh)
    losses = []
    for part in ((0, 1), (2,)):
        chunk = D.put_chunk(packed_chunk(data, part), mesh, "scan", replicas=N, steps=K)
        state, m = fn(state, chunk, jnp.stack(keys()))
        m = jax.device_get(m)
        assert len(m["loss"]) == K
        assert np.asarray(m["finite"]).all()          # padded steps cannot fail
        losses.append(np.asarray(m["loss"])[:len(part)])
    assert len(traced) == 1
    T.assert_trees_close(jax.device_get(state), ref)
    np.testing.assert_allclose(np.concatenate(losses), ref_m["loss"], rtol=1e-5)
    assert [int(x) for x in jax.device_get(state).step] == [K, K]  # padding applied nothing


@pytest.mark.parametrize("mode", ["vmap", "sequential"])
def test_eval_scores_every_replica_on_the_same_batch(mode):
    mesh = parallel.make_mesh(8)
    rng = np.random.default_rng(4)
    n = 21
    batch = {"image": rng.normal(size=(24, 1, T.HW, T.HW, 3)).astype(np.float32),
             "label": rng.integers(0, 10, 24).astype(np.int32), "mask": np.arange(24) < n}
    state = replicas.stack([parallel.replicate(s, mesh) for s in init_states()], mesh)
    fn = D.make_eval_fn(T.model_for(), mesh, preprocess=T.flip_preprocess, replicas=N,
                        replica_mode=mode)
    sums = D.eval_sums(fn, state, [parallel.to_global(batch, mesh)] * 2)
    assert sums["count"].tolist() == [2 * n, 2 * n]    # each example once per pass
    one = D.make_eval_fn(T.model_for(), mesh, preprocess=T.flip_preprocess)
    for i in range(N):
        ref = D.eval_sums(one, parallel.replicate(init_states()[i], mesh),
                          [parallel.to_global(batch, mesh)] * 2)
        assert sums["top1"][i] == ref["top1"] and sums["top5"][i] == ref["top5"]
        assert sums["loss"][i] == pytest.approx(ref["loss"], rel=1e-5 if mode == "vmap" else 0)
    assert sums["loss"][0] != pytest.approx(sums["loss"][1], rel=1e-3)


def test_the_checkpointer_keeps_each_replicas_best(tmp_path):
    checkpoints = ckpt_lib.Checkpointer(str(tmp_path / "ck"), keep=1, async_save=False,
                                        replicas=N)
    state, rng = {"w": np.zeros(2, np.float32)}, np.zeros((N, 2), np.uint32)
    errors = {1: [50.0, 40.0], 2: [30.0, 45.0], 3: [35.0, float("inf")], 4: [60.0, 60.0]}
    try:
        for step, error in errors.items():
            checkpoints.save(step, state, rng, {"step": step}, {"top1_error": error})
        checkpoints.wait()
        # 4: the newest; 2: replica 0's best (30); 1: replica 1's best (40)
        assert checkpoints.all_steps() == [1, 2, 4]
    finally:
        checkpoints.close()


def test_summary_and_paper_form():
    entries = [{"final": {"top1_error": e, "top5_error": 1.0, "loss": 0.5}, "best": None}
               for e in (6.43, 6.70, 6.61, 6.55, 6.76)] + [{"final": None, "best": None}]
    summary = replicas.summarize(entries)
    assert (summary["replicas"], summary["runs"]) == (6, 5)
    top1 = summary["final"]["top1_error"]
    assert top1["min"] == 6.43 and top1["mean"] == pytest.approx(6.61)
    assert top1["std"] == pytest.approx(np.std([6.43, 6.70, 6.61, 6.55, 6.76], ddof=1))
    assert replicas.paper_form(top1) == "6.43 (6.61 ± 0.13)"
    assert replicas.summary_line(summary) == ("5 of 6 replicas finished: final val top-1 error "
                                              "(%), best (mean ± std): 6.43 (6.61 ± 0.13)")
    with pytest.raises(ValueError, match=r"--replica 2 is out of range.*allowed: 0\.\.1"):
        replicas.check_index(2, 2, "the run")
    with pytest.raises(ValueError, match=r"pass --replica i with i in 0\.\.4"):
        replicas.check_index(None, 5, "the run")
    assert replicas.check_index(None, 1, "the run") == 0
