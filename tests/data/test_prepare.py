"""`resnet-jax prepare folder` through the CLI: only its own lines, and the train command it
prints works as printed; a run on a prepared local dataset does not say it needs internet."""
import shlex

import pytest

from resnet_jax import cli
from resnet_jax.config import load_config
from resnet_jax.train import commands, loop
from resnet_jax.train import run as run_lib


def test_prepare_folder_says_only_its_lines_and_a_train_command_that_works(
        tmp_path, capfd, helpers):
    """It printed tfds' absl warnings, its 'Downloading and preparing' banner with terminal
    codes and progress bars; and "train on it with --config.data.source=tfds ...", which
    configs/imagenette.py (the recipe for photographs) refused, its data.path being set."""
    for split, n in (("train", 4), ("val", 2)):
        helpers.write_folder(str(tmp_path / "photos" / split), ("cat", "dog"), per_class=n,
                             size=(40, 30))
    tfds_dir = tmp_path / "tfds"
    assert cli.main(["prepare", "folder", str(tmp_path / "photos"), "--name", "tiny_prepared",
                     "--data-dir", str(tfds_dir)]) == 0
    out, err = capfd.readouterr()
    assert err == ""
    command = (f"resnet-jax train --config configs/imagenette.py:tfds=tiny_prepared,val=0,batch=8 "
               f"--config.data.data_dir={tfds_dir} --workdir runs/tiny_prepared")
    assert out.splitlines() == [
        f"tfds dataset tiny_prepared in {tfds_dir}/tiny_prepared/1.0.0: train 8, validation "
        "4 examples of 2 classes (cat, dog), ArrayRecord; train on it with",
        f"  {command}"], out

    # As printed, up to the data (a ResNet-18 compiles for minutes on a CPU).
    parser = cli.build_parser("train")
    args, extra = parser.parse_known_args(shlex.split(command)[1:])
    config = load_config(args.config, commands.config_overrides(extra))
    run = run_lib.build(config)
    try:
        p = run.pipeline
        assert (p.num_classes, p.num_train_examples, p.num_eval_examples) == (2, 8, 4)
        assert p.class_names == ["cat", "dog"]
    finally:
        run.pipeline.close()


class _Stop(Exception):
    pass


@pytest.mark.parametrize("recipe, internet", [
    ("configs/imagenette.py:tfds=my_photos,val=0", False),
    ("configs/cifar10.py", True)])
def test_only_a_dataset_tfds_may_download_says_it_needs_internet(tmp_path, capsys,
                                                                 monkeypatch, recipe, internet):
    """A streaming tfds dataset is read as prepared (never downloaded); the in-memory path
    lets tfds download (CIFAR-10)."""
    def build(config):
        raise _Stop
    monkeypatch.setattr(run_lib, "build", build)
    with pytest.raises(_Stop):
        loop.train_and_evaluate(load_config(recipe), str(tmp_path / "w"))
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("data: loading tfds ")
    assert ("this needs internet" in first) == internet, first
