"""MetricsWriter: rows that survive a crash and a resume, and an object store's write rate."""
from resnet_jax.train.logging import MetricsWriter, read_metrics


def _row(step):
    return {"step": step, "epoch": step / 10, "split": "train", "loss": 1.0 / step}


def test_remote_rows_are_written_at_most_every_interval_and_at_flush(tmp_path):
    """GCS takes about one write per second per object; CIFAR on a GPU logs several rows a
    second. The file is rewritten whole, throttled, and always at a flush (each save)."""
    writer = MetricsWriter(str(tmp_path), remote_every_s=3600.0)
    writer.remote = True                     # as for gs://, on a local folder
    writer.write(_row(1))
    writer.write(_row(2))
    assert read_metrics(str(tmp_path)) == []  # not yet: within the interval
    writer.flush()
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2]
    writer.write(_row(3))
    writer.close()                            # closing flushes too
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2, 3]


def test_local_rows_are_appended_at_once_and_a_resume_drops_later_ones(tmp_path):
    writer = MetricsWriter(str(tmp_path))
    for step in (1, 2, 3):
        writer.write(_row(step))
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2, 3]
    writer.close()
    resumed = MetricsWriter(str(tmp_path), resume_step=2)   # the checkpoint was of step 2
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2]
    resumed.close()
