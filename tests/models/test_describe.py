import argparse
import json

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
