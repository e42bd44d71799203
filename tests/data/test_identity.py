"""The data cannot change under a run: the held-out part is chosen by each file's name, and a
run records its data's identity (data.json) and checks it when it resumes."""
import os
import tarfile

import pytest

from resnet_jax.data import sources


def held_out_names(cfg) -> set:
    """The held-out images as class/file."""
    ev = sources.open_splits(cfg).eval
    return {"/".join(ev.name(i).replace(":", "/").split("/")[-2:]) for i in range(len(ev))}


def test_the_held_out_part_is_chosen_by_file_name(tmp_path, helpers):
    """Deleting a training image moves no image between training and held-out (by position,
    every image after it moved); deleting a held-out image moves one training image into
    the held-out part; a tar of the same tree (with a top folder) holds out the same files."""
    root = tmp_path / "tree"
    helpers.write_folder(str(root / "train"), ("a", "b", "c"), per_class=6, size=(8, 8))
    cfg = helpers.stream_config(path=str(root), num_val_examples=4)
    held = held_out_names(cfg)
    assert len(held) == 4
    tar = str(tmp_path / "tree.tar")
    with tarfile.open(tar, "w") as t:
        t.add(str(root / "train"), arcname="top/train")
    assert held_out_names(helpers.stream_config(source="tar", path=tar,
                                                num_val_examples=4)) == held
    trained = sorted({f"{c}/{i:04d}.jpg" for c in "abc" for i in range(6)} - held)
    os.remove(root / "train" / trained[0])
    assert held_out_names(cfg) == held
    gone = sorted(held)[0]
    os.remove(root / "train" / gone)
    now = held_out_names(cfg)
    assert len(now) == 4 and now - held and len(now & held) == 3 and gone not in now


def test_the_identity_is_the_files_and_labels_not_where_they_are(tmp_path, helpers):
    """A copy of the tree elsewhere is the same data; another file, or a file in another
    class, is not; in memory the decoded images are the identity."""
    for name in ("one", "two"):
        helpers.write_folder(str(tmp_path / name / "train"), ("a", "b"), per_class=3)
        helpers.write_folder(str(tmp_path / name / "val"), ("a", "b"), per_class=1)
    one, two = (helpers.make(helpers.stream_config(path=str(tmp_path / n)), batch=2)
                for n in ("one", "two"))
    assert one.identity() == two.identity()
    os.rename(tmp_path / "two" / "train" / "a" / "0000.jpg",
              tmp_path / "two" / "train" / "b" / "0009.jpg")
    moved = helpers.make(helpers.stream_config(path=str(tmp_path / "two")), batch=2).identity()
    assert moved["train"] != one.identity()["train"] and moved["eval"] == one.identity()["eval"]
    assert moved["train"]["examples"] == 6
    mem = helpers.stream_config(pipeline="in_memory", source="folder", image_size=8,
                                train_augment="pad_crop_flip", normalize="per_pixel_mean")
    first = helpers.make(_with(mem, path=str(tmp_path / "one")), batch=2).identity()
    assert first == helpers.make(_with(mem, path=str(tmp_path / "one")), batch=2).identity()
    image = tmp_path / "one" / "val" / "b" / "0000.jpg"
    image.write_bytes((tmp_path / "one" / "val" / "a" / "0000.jpg").read_bytes())
    changed = helpers.make(_with(mem, path=str(tmp_path / "one")), batch=2).identity()
    assert changed["train"] == first["train"] and changed["eval"] != first["eval"]


def _with(cfg, **over):
    out = cfg.copy_and_resolve_references()
    out.update(over)
    return out


def listing(work) -> dict:
    """Every file of a workdir with its size and modification time (leases left out)."""
    out = {}
    for dirpath, _, names in os.walk(work):
        for name in names:
            if not name.startswith("lease."):
                st = os.stat(os.path.join(dirpath, name))
                out[os.path.relpath(os.path.join(dirpath, name), work)] = (st.st_size,
                                                                            st.st_mtime_ns)
    return out


def test_a_resume_on_changed_data_is_one_line_until_the_change_is_accepted(tmp_path, capsys):
    """Slow: two short smoke trainings and a refused one, through the CLI (the smoke net's
    programs, compiled once per session). A run records its data (data.json); resumed on
    other data (here 288 generated images instead of 320), it stops with one line saying
    what changed and how to accept it (exit 2), writing nothing; deleting data.json accepts
    it: the run resumes and records the data it now trains on (what the resume of a workdir
    from before data records does too, saying so)."""
    import json

    from resnet_jax import cli
    work = tmp_path / "run"
    base = ["train", "--config", "configs/smoke.py:steps=4", "--workdir", str(work)]
    assert cli.main(base) == 0
    recorded = json.loads((work / "data.json").read_text())
    assert recorded["train"]["examples"] == 256 and len(recorded["class_names"]) == 10
    other = ["--config.data.synthetic_examples=288", "--config.train.num_steps=8"]
    before = listing(work)
    capsys.readouterr()
    assert cli.main(base + other) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the data changed since this run started" in err
    assert "training split: 224 images, was 256" in err and f"delete {work}/data.json" in err
    assert listing(work) == before
    os.remove(work / "data.json")
    assert cli.main(base + other) == 0
    assert json.loads((work / "data.json").read_text())["train"]["examples"] == 224
    assert "no data.json" in capsys.readouterr().out
    rows = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 8


def test_a_fresh_start_records_its_data_whatever_an_earlier_attempt_left(tmp_path,
                                                                          helpers):
    """A data.json without a checkpoint (a first attempt stopped before its first save) does
    not bind the run: only a resume is checked."""
    import json

    from resnet_jax.data import identity
    work = tmp_path / "run"
    work.mkdir()
    (work / "data.json").write_text(json.dumps({"version": 1, "class_names": ["x"]}))
    p = helpers.make(helpers.stream_config(path=_tree(tmp_path, helpers)), batch=2)
    assert identity.check(str(work), p, resumed=False) == {"version": 1, **p.identity()}
    with pytest.raises(ValueError, match="class names: 2 classes, was 1"):
        identity.check(str(work), p, resumed=True)


def _tree(tmp_path, helpers) -> str:
    helpers.write_folder(str(tmp_path / "t" / "train"), ("a", "b"), per_class=2)
    helpers.write_folder(str(tmp_path / "t" / "val"), ("a", "b"), per_class=1)
    return str(tmp_path / "t")
