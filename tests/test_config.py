"""Config loading: recipes fill the schema with the paper's numbers; bad input is named."""
import json

import pytest

from resnet_jax import config as cfg
from resnet_jax import schema

RECIPES = ["configs/cifar10.py", "configs/imagenet_paper.py", "configs/imagenet_modern.py",
           "configs/smoke.py"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_fills_the_schema(recipe):
    config = cfg.load_config(recipe)
    for section, fields in schema.FIELDS.items():
        node = config[section] if section else config
        assert set(fields) <= set(node.keys())
    # No field the schema does not know: one meaning and one home per field.
    for section in ("model", "data", "optim", "train"):
        assert set(config[section].keys()) == set(schema.FIELDS[section])


def test_cifar10_is_the_papers_recipe():
    c = cfg.load_config("configs/cifar10.py")
    assert (c.model.arch, c.model.depth, c.model.shortcut, c.model.plain) == ("cifar", 20, "A", False)
    assert (c.train.batch_size, c.train.num_steps) == (128, 64000)
    assert tuple(c.optim.boundaries) == (32000, 48000) and c.optim.schedule_unit == "steps"
    assert (c.optim.lr, c.optim.momentum, c.optim.weight_decay) == (0.1, 0.9, 1e-4)
    assert c.data.num_val_examples == 5000 and c.data.train_augment == "pad_crop_flip"
    assert c.optim.warmup == "none"


def test_cifar10_arguments_and_resnet110_warmup():
    c = cfg.load_config("configs/cifar10.py:depth=110,shortcut=B,plain=false")
    assert (c.model.depth, c.model.shortcut, c.model.plain) == (110, "B", False)
    assert (c.optim.warmup, c.optim.warmup_lr, c.optim.warmup_length) == ("constant", 0.01, 400)
    plain = cfg.load_config("configs/cifar10.py:depth=56,plain=true")
    assert plain.model.plain is True and plain.model.depth == 56


def test_imagenet_recipes():
    p = cfg.load_config("configs/imagenet_paper.py:depth=50,epochs=90")
    assert (p.train.batch_size, p.optim.lr, tuple(p.optim.boundaries)) == (256, 0.1, (30, 60))
    assert p.train.num_steps == 90 * (1281167 // 256)
    assert (p.data.train_augment, p.data.eval_crops, p.data.lighting_std) == ("scale", "10crop", 0.1)
    p120 = cfg.load_config("configs/imagenet_paper.py")
    assert tuple(p120.optim.boundaries) == (30, 60, 90)
    m = cfg.load_config("configs/imagenet_modern.py")
    assert (m.model.bottleneck_stride, m.model.dtype, m.optim.schedule) == ("v1.5", "bfloat16", "cosine")
    assert (m.optim.warmup, m.optim.label_smoothing, m.data.train_augment) == ("linear", 0.1, "inception")


def test_overrides_are_typed():
    c = cfg.load_config("configs/smoke.py", ["--config.optim.lr=0.2", "--config.train.num_steps=3",
                                             "--config.train.progress=true",
                                             "--config.optim.boundaries=1,2", "config.seed=7"])
    assert c.optim.lr == 0.2 and isinstance(c.optim.lr, float)
    assert c.train.num_steps == 3 and c.train.progress is True and c.seed == 7
    assert tuple(c.optim.boundaries) == (1, 2)
    one = cfg.load_config("configs/smoke.py", ["--config.optim.lr=1"])
    assert isinstance(one.optim.lr, float)


@pytest.mark.parametrize("override, named", [
    ("--config.optim.lrr=0.2", "optim.lrr"),
    ("--config.optimizer.lr=0.2", "optimizer"),
    ("--config.optim.lr=fast", "optim.lr"),
    ("--config.train.batch_size=12.5", "train.batch_size"),
    ("--config.train.progress=maybe", "train.progress"),
    ("--config.model=3", "model"),
    ("--config.train.batch_size=0", "train.batch_size"),
    ("--config.optim.boundaries=5,1", "optim.boundaries"),
    ("--config.optim.boundaries=2,2", "optim.boundaries"),
    ("--config.optim.lr=0", "optim.lr=0.0 must be > 0"),
    ("--config.optim.lr=-0.1", "optim.lr=-0.1 must be > 0"),
    ("--config.optim.weight_decay=-1e-4", "optim.weight_decay=-0.0001 must be >= 0"),
    ("--config.optim.momentum=1.0", "optim.momentum=1.0 must be in [0, 1)"),
    ("--config.optim.momentum=-0.5", "optim.momentum"),
    ("--config.optim.decay_factor=10", "optim.decay_factor"),
    ("--config.optim.label_smoothing=1.0", "optim.label_smoothing"),
    ("--config.data.lighting_std=-1", "data.lighting_std"),
    ("--config.data.eval_resize=8", "data.eval_resize=8 is smaller than data.image_size=16"),
    ("--config.data.multiscale_sizes=16,0", "data.multiscale_sizes"),
])
def test_bad_fields_are_refused_by_name(override, named):
    with pytest.raises(ValueError) as err:
        cfg.load_config("configs/smoke.py", [override])
    assert named in str(err.value)


def test_bad_enum_names_allowed_values():
    with pytest.raises(ValueError, match="model.shortcut.*A, B, C"):
        cfg.load_config("configs/smoke.py", ["--config.model.shortcut=D"])
    with pytest.raises(ValueError, match="train.bn_mode.*global, per_device, group"):
        cfg.load_config("configs/smoke.py", ["--config.train.bn_mode=sync"])
    with pytest.raises(ValueError, match="model.depth.*6n\\+2"):
        cfg.load_config("configs/smoke.py:depth=10")


def test_bad_recipe_argument_and_file():
    with pytest.raises(ValueError, match="'dpeth'"):
        cfg.load_config("configs/cifar10.py:dpeth=20")
    with pytest.raises(ValueError, match="does not exist"):
        cfg.load_config("configs/nope.py")


def test_check_fits_names_the_batch():
    c = cfg.load_config("configs/smoke.py", ["--config.train.batch_size=12"])
    with pytest.raises(ValueError, match="train.batch_size=12.*8 devices"):
        cfg.check_fits(c, num_devices=8, process_count=1)
    cfg.check_fits(cfg.load_config("configs/smoke.py"), num_devices=8, process_count=2)


def test_json_round_trip():
    c = cfg.load_config("configs/imagenet_paper.py")
    back = cfg.from_json(cfg.to_json(c))
    assert back.to_dict() == c.to_dict()
    assert isinstance(back.optim.boundaries, tuple)


def test_older_workdir_config_gets_the_fields_added_since():
    c = cfg.load_config("configs/cifar10.py:depth=20").to_dict()
    del c["model"]["scan_blocks"], c["data"]["prefetch"], c["data"]["num_classes"]
    back = cfg.from_json(json.dumps(c))
    assert (back.model.scan_blocks, back.data.prefetch, back.data.num_classes) == (False, 2, 0)
    assert cfg.validate(back) is back


def test_older_workdir_config_gets_the_variant_defaults():
    for recipe in ("configs/cifar10.py:depth=110", "configs/imagenet_paper.py:depth=50"):
        c = cfg.load_config(recipe).to_dict()
        for field in ("block", *schema.VARIANT_DEFAULTS):
            del c["model"][field]
        back = cfg.from_json(json.dumps(c))
        assert back.model.block == "auto" and back.model.unit == "post"
        assert back.model.shortcut_variant == "identity" and back.model.gate_bias == 0.0
        assert cfg.validate(back) is back


def test_cifar10_bottleneck_and_unit_arguments():
    c = cfg.load_config("configs/cifar10.py:depth=164,block=bottleneck,unit=preact")
    assert (c.model.block, c.model.unit, c.model.shortcut) == ("bottleneck", "preact", "B")
    assert c.optim.warmup == "constant" and not c.model.scan_blocks
    deep = cfg.load_config("configs/cifar10.py:depth=1001,block=bottleneck")
    assert deep.model.scan_blocks and deep.model.shortcut == "B"
    assert cfg.load_config("configs/cifar10.py:depth=110").model.shortcut == "A"
    gated = cfg.load_config("configs/cifar10.py:depth=110", [
        "--config.model.shortcut_variant=exclusive_gate", "--config.model.gate_bias=-6"])
    assert gated.model.gate_bias == -6.0
    # an ImageNet depth changed by override keeps its own block ('auto')
    fifty = cfg.load_config("configs/imagenet_paper.py", ["--config.model.depth=50"])
    assert (fifty.model.depth, fifty.model.block) == (50, "auto")


@pytest.mark.parametrize("recipe, overrides, message", [
    ("configs/cifar10.py", ["--config.model.unit=pre"],
     "config field model.unit='pre' is not allowed; allowed values: post, bn_after_add, "
     "relu_before_add, relu_preact, preact"),
    ("configs/cifar10.py", ["--config.model.shortcut_variant=gate"],
     "config field model.shortcut_variant='gate' is not allowed; allowed values: identity, "),
    ("configs/cifar10.py", ["--config.model.shortcut_variant=scale",
                            "--config.model.shortcut_scale=0"],
     "config field model.shortcut_scale=0.0 must be > 0"),
    ("configs/cifar10.py:plain=true", ["--config.model.shortcut_variant=exclusive_gate"],
     "config field model.shortcut_variant='exclusive_gate' with plain=True"),
    ("configs/cifar10.py:depth=32,block=bottleneck", [],
     "config field model.depth=32 is not a CIFAR bottleneck ResNet depth.*9n\\+2"),
    ("configs/cifar10.py", ["--config.model.block=deep"],
     "config field model.block='deep' is not allowed; allowed values: auto, basic, bottleneck"),
    ("configs/imagenet_paper.py:depth=50", ["--config.model.block=basic"],
     "config field model.block='basic' does not fit ImageNet depth 50"),
    ("configs/cifar10.py", ["--config.model.gate_bias=-6"],
     "config field model.gate_bias=-6.0 acts only with shortcut_variant in"),
])
def test_bad_variant_values_are_one_line_naming_the_field(recipe, overrides, message):
    with pytest.raises(ValueError, match=message) as raised:
        cfg.load_config(recipe, overrides)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("recipe", ["configs/smoke.py:plain=true", "configs/cifar10.py:plain=true"])
def test_plain_with_zero_init_residual_is_refused(recipe):
    with pytest.raises(ValueError, match="model.zero_init_residual=True with model.plain=True"):
        cfg.load_config(recipe, ["--config.model.zero_init_residual=true"])


def test_modern_recipe_plain_gets_no_zero_init():
    assert cfg.load_config("configs/imagenet_modern.py").model.zero_init_residual is True
    plain = cfg.load_config("configs/imagenet_modern.py:plain=true,depth=34")
    assert plain.model.plain is True and plain.model.zero_init_residual is False


def test_recipe_arguments_name_the_accepted_keys_and_take_tuples():
    defaults = {"depth": 20, "plain": False, "depths": (20, 56)}
    got = cfg.parse_config_arg("depth=56,plain=false,depths=20/32/44", defaults)
    assert got == {"depth": 56, "plain": False, "depths": (20, 32, 44)}
    with pytest.raises(ValueError, match="config argument '4' is not key=value; accepted keys: "
                                         "depth, plain, depths"):
        cfg.parse_config_arg("4", defaults)
    with pytest.raises(ValueError, match="sweep argument 'stepz' is unknown"):
        cfg.parse_config_arg("stepz=4", defaults, kind="sweep argument")
    with pytest.raises(ValueError, match="config argument depths: expected int, got 'x'"):
        cfg.parse_config_arg("depths=20/x", defaults)


def test_cifar10_data_argument_picks_the_source():
    assert (lambda d: (d.source, d.name, d.path))(cfg.load_config("configs/cifar10.py").data) \
        == ("tfds", "cifar10", "")
    tar = cfg.load_config("configs/cifar10.py:data=../shared/data/cifar10-train.tar.gz").data
    assert (tar.source, tar.path) == ("tar", "../shared/data/cifar10-train.tar.gz")
    assert cfg.load_config("configs/cifar10.py:data=/d/cifar").data.source == "folder"
    # A path with the tfds default would be ignored silently: refused, naming the fix.
    with pytest.raises(ValueError, match="data.path=.*only read with data.source=tar or folder"):
        cfg.load_config("configs/cifar10.py", ["--config.data.path=x.tar.gz"])


@pytest.mark.parametrize("override", ["--config.data.lighting_std=0.1",
                                      "--config.data.eval_resize=20", "--config.data.workers=4"])
def test_fields_the_pipeline_does_not_read_are_refused_by_name(override):
    """The in-memory pipeline reads neither PCA lighting, nor a resize for evaluation, nor
    decoding workers: setting one would do nothing, silently."""
    field, value = override[len("--config."):].split("=")
    with pytest.raises(ValueError, match=f"{field}={value} is not read by "
                                         "data.pipeline='in_memory'"):
        cfg.load_config("configs/smoke.py", [override])
    cfg.load_config("configs/smoke.py", ["--config.data.workers=-1"])  # the neutral values


def test_a_removed_field_is_refused_in_a_recipe_and_dropped_from_an_older_workdir():
    c = cfg.load_config("configs/cifar10.py:depth=20").to_dict()
    c["data"]["shuffle_buffer"] = 0  # as every workdir before it was removed has it
    back = cfg.from_json(json.dumps(c))
    assert "shuffle_buffer" not in back.data and cfg.validate(back) is back
    import ml_collections
    with pytest.raises(ValueError, match="data.shuffle_buffer was removed.*read nowhere"):
        cfg.validate(ml_collections.ConfigDict(c))


def test_streaming_per_pixel_mean_is_named_for_what_it_is():
    """On the streaming path 'per_pixel_mean' was the mean colour and one scalar std: a new
    recipe names it 'channel_mean_scalar_std', an older workdir's config is renamed; the
    in-memory per-pixel mean keeps its name."""
    with pytest.raises(ValueError, match="normalize='per_pixel_mean' is not supported by "
                                         "data.pipeline='streaming'.*channel_mean_scalar_std"):
        cfg.load_config("configs/imagenet_paper.py", ["--config.data.normalize=per_pixel_mean"])
    c = cfg.load_config("configs/imagenet_paper.py").to_dict()
    c["data"]["normalize"] = "per_pixel_mean"
    back = cfg.from_json(json.dumps(c))
    assert back.data.normalize == "channel_mean_scalar_std" and cfg.validate(back) is back
    memory = cfg.load_config("configs/cifar10.py:depth=20")
    assert cfg.from_json(cfg.to_json(memory)).data.normalize == "per_pixel_mean"


@pytest.mark.parametrize("steps, boundaries", [(1, ()), (2, (1,)), (3, (1, 2)), (4, (2, 3)),
                                               (3000, (1500, 2250))])
def test_imagenette_decays_at_half_and_three_quarters_of_any_steps(steps, boundaries):
    """steps=2 made optim.boundaries=(1, 1), a field the user never set, and was refused."""
    c = cfg.load_config(f"configs/imagenette.py:steps={steps}")
    assert tuple(c.optim.boundaries) == boundaries and c.train.num_steps == steps


def test_imagenette_takes_a_tfds_dataset_by_name():
    """What `resnet-jax prepare folder` prints to train on its dataset: data.path (the tar's)
    with source=tfds was refused."""
    d = cfg.load_config("configs/imagenette.py:tfds=my_photos,val=0",
                        ["--config.data.data_dir=/d/tfds"]).data
    assert (d.source, d.name, d.path, d.data_dir, d.num_val_examples) == (
        "tfds", "my_photos", "", "/d/tfds", 0)
    with pytest.raises(ValueError, match="data and tfds name two datasets"):
        cfg.load_config("configs/imagenette.py:tfds=my_photos,data=/d/photos")
