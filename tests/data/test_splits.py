"""One rule for the splits of an image tree (`folders.split_of`, `folders.eval_split`): every
reader of the same tree, as a folder and as a tar (streaming sources, the in-memory loader,
`resnet-jax prepare`, `resnet-jax eval --data`), sees the same training split, picks the same
evaluation split and reads the same images from it."""
import io
import tarfile
from collections import Counter

import ml_collections
import numpy as np
from PIL import Image

from resnet_jax.data import folders, in_memory_pipeline, prepare, sources
from resnet_jax.interop import eval_sources

# split/class -> number of images. 'validation' comes before 'test' (`EVAL_SPLIT_NAMES`);
# a hidden split is never one.
TREE = {"train/cat": 3, "train/dog": 2, "validation/cat": 1, "validation/dog": 2,
        "test/dog": 1, ".hidden/cat": 1}
# In the tar only: an image two folders below train is in split 'extra' (the folder above its
# class), not in train (the in-memory reader once took any ancestor named train).
NESTED = "top/train/extra/cat/9.jpg"


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    arr = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), np.uint8)
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def members(top: str = "") -> dict:
    out = {}
    for folder, n in TREE.items():
        for i in range(n):
            out[f"{top}{folder}/{i}.jpg"] = jpeg(len(out))
    return out


def make_tree(tmp_path):
    root = tmp_path / "tree"
    for name, data in members().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    tar = str(tmp_path / "tree.tar")
    with tarfile.open(tar, "w") as t:
        for name, data in {**members("top/"), NESTED: jpeg(99)}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return str(root), tar


def cfg(source, path, tmp_path):
    return ml_collections.ConfigDict(dict(
        pipeline="in_memory", source=source, name="", path=path, data_dir=str(tmp_path / "c"),
        num_val_examples=0, on_corrupt="error", synthetic_examples=1, image_size=8))


def classes_of(names) -> Counter:
    """Images per class of a list of member or file names."""
    return Counter(n.replace("\\", "/").split("/")[-2] for n in names)


def test_every_reader_sees_the_same_splits(tmp_path):
    want_train, want_eval = Counter(cat=3, dog=2), Counter(cat=1, dog=2)
    folder, tar = make_tree(tmp_path)
    assert folders.eval_split(["test", "validation", "train"]) == "validation"
    for kind, path in (("folder", folder), ("tar", tar)):
        # streaming
        splits = sources.open_splits(cfg(kind, path, tmp_path))
        assert splits.eval_split == "validation", kind
        for records, want in ((splits.train, want_train), (splits.eval, want_eval)):
            assert classes_of(records.name(i) for i in range(len(records))) == want, kind
        # in memory
        train = in_memory_pipeline._load_split(cfg(kind, path, tmp_path), "train")
        ev = in_memory_pipeline._load_split(cfg(kind, path, tmp_path), "eval", train[2])
        for (_, labels, names), want in ((train, want_train), (ev, want_eval)):
            assert Counter(names[y] for y in labels) == want, kind
        # resnet-jax prepare (a folder or an uncompressed tar -> ArrayRecord)
        prepared, _ = prepare.folder_splits(path)
        assert sorted(prepared) == ["test", "train", "validation"], kind
        for split, want in (("train", want_train), ("validation", want_eval)):
            records = prepared[split]
            assert classes_of(records.name(i) for i in range(len(records))) == want, kind
        # resnet-jax eval --data
        source = eval_sources.open_source(path)
        assert source.split == "validation", kind
        assert classes_of(name for name, _, _ in source.examples()) == want_eval, kind
