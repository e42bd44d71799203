import argparse
import json

import pytest

from resnet_jax.models import describe


def test_describe_json_has_counts_and_stages(capsys):
    parser = argparse.ArgumentParser()
    describe.add_arguments(parser)
    assert describe.run(parser.parse_args(["cifar_resnet20", "--json"])) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 269_722
    assert abs(info["macs"] - 40.55e6) / 40.55e6 < 5e-3
    assert info["stages"] == {"stem": [32, 32, 16], "layer1": [32, 32, 16],
                              "layer2": [16, 16, 32], "layer3": [8, 8, 64]}


def test_describe_text_mentions_options(capsys):
    parser = argparse.ArgumentParser()
    describe.add_arguments(parser)
    describe.run(parser.parse_args(["resnet18", "--shortcut", "C", "--image-size", "64"]))
    out = capsys.readouterr().out
    assert "shortcut C" in out and "layer4         2x2x512" in out


def test_describe_counts_the_2016_variants_through_the_cli(capsys):
    from resnet_jax import cli
    assert cli.main(["describe", "cifar_resnet1001", "--block", "bottleneck", "--unit",
                     "preact", "--scan-blocks", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["params"], info["bn_params"], info["macs"]) == (10_327_706, 149_216,
                                                                1_487_849_984)
    assert info["options"]["unit"] == "preact" and info["stages"]["layer3"] == [8, 8, 256]
    assert cli.main(["describe", "cifar_resnet20", "--shortcut-variant", "exclusive_gate",
                     "--gate-bias", "-6"]) == 0
    out = capsys.readouterr().out
    assert "exclusive_gate (gate_bias -6.0)" in out
    # a gate per unit: 1x1 conv (in x out) + bias (out), 3 units per stage
    gates = (3 * (16 * 16 + 16) + (16 * 32 + 32) + 2 * (32 * 32 + 32) + (32 * 64 + 64)
             + 2 * (64 * 64 + 64))
    bn = 2 * (16 + 2 * 3 * (16 + 32 + 64))
    assert f"parameters     {269_722 + gates:,}  (conv and fc {269_722 + gates - bn:,}; " \
           f"BN {bn:,})" in out


def test_describe_refuses_a_bad_variant_in_one_line(capsys):
    from resnet_jax import cli
    assert cli.main(["describe", "cifar_resnet110", "--shortcut-variant", "scale",
                     "--shortcut-scale", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "resnet-jax describe: error: shortcut_scale=0.0 must be > 0 (finite)"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["describe", "cifar_resnet110", "--unit", "pre"])
    assert exit_.value.code == 2
    assert "argument --unit: invalid choice: 'pre' (choose from 'post', 'bn_after_add', " \
           "'relu_before_add', 'relu_preact', 'preact')" in capsys.readouterr().err
