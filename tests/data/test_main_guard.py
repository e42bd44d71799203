"""A script that uses the streaming pipeline's worker processes from top-level code outside
`if __name__ == "__main__":` is refused at once in one line naming its line (each spawned
worker runs the script again: it started the same run, was refused by the lease, died, and
the run ended in a grain traceback); guarded scripts, and workers=0, run as before. The
scripts run here as `python script.py` runs them (`runpy.run_path(..., run_name="__main__")`:
the same `__main__` module, file and top-level frame)."""
import runpy
import textwrap

import pytest

SCRIPT = """\
from resnet_jax.data import make_pipeline
from resnet_jax.config import load_config

config = load_config("configs/smoke.py", [
    "--config.data.pipeline=streaming", "--config.data.source=folder",
    "--config.data.path={data}", "--config.data.num_val_examples=0",
    "--config.data.image_size=8", "--config.data.eval_resize=8",
    "--config.data.normalize=per_channel", "--config.data.train_augment=scale",
    "--config.data.workers={workers}"])

def build():
    pipeline = make_pipeline(config.data, global_batch_size=2, eval_batch_size=2, seed=0)
    pipeline.close()
    return "built"
"""


@pytest.fixture
def data(tmp_path, helpers):
    for split in ("train", "val"):
        helpers.write_folder(str(tmp_path / "data" / split), per_class=2)
    return tmp_path / "data"


def _run(tmp_path, data, body: str, workers: int = 1) -> dict:
    path = tmp_path / "script.py"
    path.write_text(SCRIPT.format(data=data, workers=workers) + textwrap.dedent(body))
    return runpy.run_path(str(path), run_name="__main__")


@pytest.mark.parametrize("body, line", [   # line: of the body's call at the top level
    ("result = build()\n", 1),
    ("def main():\n    return build()\n\nresult = main()\n", 4),
])
def test_an_unguarded_script_is_refused_in_one_line_naming_its_line(tmp_path, data, body,
                                                                   line):
    with pytest.raises(ValueError) as refused:
        _run(tmp_path, data, body)
    message = str(refused.value)
    assert "\n" not in message
    line += SCRIPT.count("\n")
    assert message.startswith(f"{tmp_path / 'script.py'}, line {line}: put this under "
                              '`if __name__ == "__main__":`')
    assert "data.workers=0" in message


@pytest.mark.parametrize("body, workers", [
    ('if __name__ == "__main__":\n    result = build()\n', 1),
    ('def main():\n    return build()\n\nif "__main__" == __name__:\n    result = main()\n', 1),
    ("result = build()\n", 0),
])
def test_a_guarded_script_or_one_without_workers_runs(tmp_path, data, body, workers):
    assert _run(tmp_path, data, body, workers)["result"] == "built"
