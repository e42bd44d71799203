"""Sweep configs -> members: order, names, specs and the shipped configs."""
import functools
import json
import operator
from pathlib import Path

import pytest

from resnet_jax import cli
from resnet_jax.sweeps import collect, grid, recipes, report, run

REPO = Path(__file__).resolve().parents[2]


def _sweep(axes, **extra):
    return grid.sweep_from_config({"base": "configs/cifar10.py", "axes": axes, **extra})


def test_members_are_the_cartesian_product_first_axis_outermost():
    sweep = _sweep([("model.depth", [20, 32, 44]), ("model.plain", [True, False])])
    names = [m.name for m in sweep.members()]
    assert names == ["depth=20,plain=true", "depth=20,plain=false", "depth=32,plain=true",
                     "depth=32,plain=false", "depth=44,plain=true", "depth=44,plain=false"]
    assert [m.index for m in sweep.members()] == list(range(6))
    assert sweep.members()[3].values == (("model.depth", 32), ("model.plain", False))


def test_clashing_leaf_names_keep_the_full_path():
    assert grid.axis_labels(["model.seed", "seed", "model.depth"]) == [
        "model.seed", "seed", "depth"]


@pytest.mark.parametrize("bad, word", [
    ({"axes": [("seed", [0])]}, "base"),
    ({"base": "configs/cifar10.py", "axes": []}, "axes"),
    ({"base": "configs/cifar10.py", "axes": [("seed", [])]}, "seed"),
    ({"base": "configs/cifar10.py", "axes": [("seed", [1, 1])]}, "repeats"),
    ({"base": "configs/cifar10.py", "axes": [("seed", 3)]}, "seed"),
    ({"base": "configs/cifar10.py", "axes": [("seed", [0])],
      "recipe_args": [("model.depth", "depth")]}, "recipe_args"),
])
def test_bad_sweep_configs_name_the_field(bad, word):
    with pytest.raises(ValueError, match=word):
        grid.sweep_from_config(bad)


def test_missing_base_file_is_reported():
    with pytest.raises(ValueError, match="nope.py"):
        grid.sweep_from_config({"base": "configs/nope.py", "axes": [("seed", [0])]})


def test_recipe_arg_axes_go_to_the_recipe_so_derived_settings_follow():
    # ResNet-110's lr warmup is derived by the recipe from its depth argument; setting
    # model.depth as a field would silently drop it.
    sweep = grid.load_sweep(str(REPO / "configs/sweeps/cifar10_depth_plain.py:steps=16000"))
    m110 = [m for m in sweep.members() if m.name == "depth=110,plain=false"][0]
    spec, overrides = grid.member_spec(sweep, m110)
    assert spec.endswith("cifar10.py:depth=110,plain=false")
    config = run.member_config(sweep, m110)
    assert (config.model.depth, config.model.plain) == (110, False)
    assert (config.optim.warmup, config.optim.warmup_length) == ("constant", 400)
    # the shortened recipe keeps the drops at 1/2 and 3/4 of the run, like 32k/48k of 64k
    assert config.train.num_steps == 16000 and tuple(config.optim.boundaries) == (8000, 12000)
    m20 = sweep.members()[0]
    assert run.member_config(sweep, m20).optim.warmup == "none"


def test_field_axes_become_typed_overrides():
    sweep = grid.load_sweep(str(REPO / "configs/sweeps/cifar10_shortcut.py:depth=32,seeds=2"))
    member = sweep.members()[3]
    assert member.name == "shortcut=B,seed=1"
    config = run.member_config(sweep, member)
    assert (config.model.depth, config.model.shortcut, config.seed) == (32, "B", 1)


def test_an_override_that_contradicts_an_axis_is_refused():
    sweep = grid.load_sweep(str(REPO / "configs/sweeps/smoke.py"))
    with pytest.raises(ValueError, match="model.plain"):
        run.member_config(sweep, sweep.members()[0], ["--config.model.plain=true"])


@pytest.mark.parametrize("name, count", [
    ("cifar10_depth_plain.py", 10), ("cifar10_shortcut.py", 9),
    ("imagenet_shortcut34.py", 3), ("imagenet_plain_vs_resnet.py", 4), ("smoke.py", 4)])
def test_shipped_sweeps_load_and_every_member_config_validates(name, count):
    sweep = grid.load_sweep(str(REPO / "configs/sweeps" / name))
    members = sweep.members()
    assert len(members) == count
    for member in members:
        config = run.member_config(sweep, member)
        for field, value in member.values:
            assert functools.reduce(operator.getitem, field.split("."), config) == value


def test_table2_and_table3_sweeps_match_the_paper_setup():
    t2 = grid.load_sweep(str(REPO / "configs/sweeps/imagenet_plain_vs_resnet.py:epochs=90"))
    configs = [run.member_config(t2, m) for m in t2.members()]
    assert {(c.model.depth, c.model.plain) for c in configs} == {
        (18, True), (18, False), (34, True), (34, False)}
    assert {c.model.shortcut for c in configs} == {"A"}  # Table 2 uses option A
    t3 = grid.load_sweep(str(REPO / "configs/sweeps/imagenet_shortcut34.py"))
    assert [run.member_config(t3, m).model.shortcut for m in t3.members()] == ["A", "B", "C"]


def test_shards_partition_the_grid():
    shards = [run.select_indices(10, num_shards=3, shard_index=j) for j in range(3)]
    assert sorted(sum(shards, [])) == list(range(10))
    assert shards[1] == [1, 4, 7]
    assert run.select_indices(10, member=7) == [7]
    with pytest.raises(ValueError, match="--member"):
        run.select_indices(10, member=10)
    with pytest.raises(ValueError, match="--shard-index"):
        run.select_indices(10, num_shards=2, shard_index=2)


@pytest.mark.parametrize("spec, words", [
    ("smoke.py:stepz=4", ["'stepz' is unknown", "accepted keys: steps"]),
    ("smoke.py:4", ["'4' is not key=value", "accepted keys: steps"]),
    ("smoke.py:steps=abc", ["sweep argument steps", "expected int", "'abc'"]),
    ("cifar10_depth_plain.py:depths=20/x", ["sweep argument depths", "'x'"]),
    ("cifar10_depth_plain.py:steps=600,dephts=20", ["'dephts'", "steps, depths, seeds"]),
    ("imagenet_shortcut34.py:epoch=90", ["'epoch' is unknown", "accepted keys: epochs"]),
    ("imagenet_plain_vs_resnet.py:90", ["'90' is not key=value"]),
])
def test_bad_sweep_arguments_are_one_line_naming_the_key(tmp_path, capsys, spec, words):
    with pytest.raises(ValueError) as info:
        grid.load_sweep(str(REPO / "configs/sweeps" / spec))
    for word in words:
        assert word in str(info.value)
    assert cli.main(["sweep", str(REPO / "configs/sweeps" / spec), "--workdir",
                     str(tmp_path / "w"), "--list"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words[0] in err
    assert not (tmp_path / "w").exists()


def test_sweep_arguments_are_typed_like_their_defaults():
    defaults = {"steps": 8, "depths": (20, 32), "plain": True, "lr": 0.1, "name": "x"}
    assert recipes.parse_args("depths=20/56,plain=false,lr=1e-2, steps=4", defaults) == {
        "steps": 4, "depths": (20, 56), "plain": False, "lr": 0.01, "name": "x"}
    assert recipes.parse_args(None, defaults) == defaults
    with pytest.raises(ValueError, match="sweep argument plain: expected a bool"):
        recipes.parse_args("plain=maybe", defaults)
    sweep = grid.load_sweep(str(REPO / "configs/sweeps/smoke.py:steps=4"))
    assert sweep.base.endswith("configs/smoke.py:steps=4")


def test_members_that_differ_only_in_consecutive_seeds_pack_into_replicas():
    sweep = _sweep([("model.depth", [20, 56]), ("seed", [0, 1, 2, 5])])
    packed = sweep.members(pack=True)
    assert [(m.index, m.name) for m in packed] == [
        (0, "depth=20,seed=0-2"), (1, "depth=20,seed=5"), (2, "depth=56,seed=0-2"),
        (3, "depth=56,seed=5")]
    assert packed[0].values == (("model.depth", 20), ("seed", 0), ("train.replicas", 3))
    assert packed[0].packs == ("depth=20,seed=0", "depth=20,seed=1", "depth=20,seed=2")
    assert packed[1] == grid.Member(1, (("model.depth", 20), ("seed", 5)), "depth=20,seed=5")
    config = run.member_config(sweep, packed[2])
    assert (config.model.depth, config.seed, config.train.replicas) == (56, 0, 3)
    # Nothing to pack without a seed axis; the grid itself is unchanged by packing.
    plain = _sweep([("model.depth", [20, 56])])
    assert plain.members(pack=True) == plain.members()
    assert len(sweep.members()) == 8


def test_seeds_adds_a_seed_axis_once():
    sweep = grid.with_seeds(_sweep([("model.shortcut", ["A", "B"])]), 3)
    assert [m.name for m in sweep.members(pack=True)] == ["shortcut=A,seed=0-2",
                                                          "shortcut=B,seed=0-2"]
    with pytest.raises(ValueError, match="--seeds 2: the sweep already varies 'seed'"):
        grid.with_seeds(sweep, 2)
    with pytest.raises(ValueError, match="--seeds 0 must be >= 1"):
        grid.with_seeds(_sweep([("model.shortcut", ["A"])]), 0)


def test_a_joint_axis_sets_its_fields_together_and_reads_back_from_sweep_json():
    sweep = _sweep([(("model.depth", "model.block"), [(110, "basic"), (164, "bottleneck")]),
                    ("model.unit", ["post", "preact"])])
    assert sweep.fields == ["model.depth", "model.block", "model.unit"]
    members = sweep.members()
    assert [m.name for m in members] == [
        "depth=110,block=basic,unit=post", "depth=110,block=basic,unit=preact",
        "depth=164,block=bottleneck,unit=post", "depth=164,block=bottleneck,unit=preact"]
    assert members[3].values == (("model.depth", 164), ("model.block", "bottleneck"),
                                 ("model.unit", "preact"))
    desc = json.loads(json.dumps(sweep.to_json()))  # what sweep.json holds
    assert collect.grid_values(desc) == {m.name: dict(m.values) for m in members}
    assert collect.varied_fields(desc, []) == sweep.fields
    with pytest.raises(ValueError, match="joint: each value must be a tuple of 2 values"):
        _sweep([(("model.depth", "model.block"), [(110, "basic"), (164,)])])
    with pytest.raises(ValueError, match="names a field twice"):
        _sweep([(("model.depth", "model.block"), [(110, "basic")]), ("model.depth", [20])])


@pytest.mark.parametrize("name, count, table", [
    ("cifar10_shortcut_variants.py", 11, 1), ("cifar10_unit_variants.py", 10, 2)])
def test_identity_mapping_tables_have_a_published_number_for_every_row(name, count, table):
    sweep = grid.load_sweep(str(REPO / "configs/sweeps" / name))
    members = sweep.members()
    assert len(members) == count and f"Table {table}" in sweep.published_source
    for member in members:
        config = run.member_config(sweep, member)  # every row is a valid config
        values = dict(member.values)
        for field, value in values.items():
            assert functools.reduce(operator.getitem, field.split("."), config) == value
        assert report.published_error(sweep.to_json()["published"], values) != "-"
        assert config.optim.warmup == "constant"  # the paper warms up every CIFAR run


def test_identity_mapping_tables_quote_the_paper():
    t1 = grid.load_sweep(str(REPO / "configs/sweeps/cifar10_shortcut_variants.py"))
    text = {dict(v)["model.shortcut_variant"] + str(dict(v)["model.gate_bias"]): t
            for v, t in t1.published if not dict(v)["model.plain"]
            and dict(v)["model.shortcut"] == "A"}
    assert (text["identity0.0"], text["exclusive_gate-6.0"], text["shortcut_gate-6.0"]) == (
        "6.61", "8.70", "6.91")
    t2 = grid.load_sweep(str(REPO / "configs/sweeps/cifar10_unit_variants.py"))
    preact = {dict(v)["model.depth"]: t for v, t in t2.published
              if dict(v)["model.unit"] == "preact"}
    assert preact == {110: "6.37", 164: "5.46"}
    configs = [run.member_config(t2, m) for m in t2.members()]
    assert {(c.model.depth, c.model.block, c.model.shortcut) for c in configs} == {
        (110, "basic", "A"), (164, "bottleneck", "B")}
    # another depth has no published numbers; a subset of rows and units
    small = grid.load_sweep(str(REPO / "configs/sweeps/cifar10_shortcut_variants.py:depth=20,"
                                      "rows=original/dropout"))
    assert len(small.members()) == 2 and not small.published
    assert len(grid.load_sweep(str(REPO / "configs/sweeps/cifar10_unit_variants.py:"
                                          "bottleneck=0,units=post/preact")).members()) == 2
    with pytest.raises(ValueError, match="rows: \\['gated'\\] unknown"):
        grid.load_sweep(str(REPO / "configs/sweeps/cifar10_shortcut_variants.py:rows=gated"))
