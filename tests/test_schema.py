"""The shard schema shared by data preparation and training."""
import io
import tarfile

import numpy as np
import pytest

from alphaclip_core import rle_encode
from alphaclip_train.schema import ShardWriter, iter_shard, validate_record


def _record(key="a1", w=8, h=6):
    m = np.zeros((h, w), bool)
    m[1:4, 2:5] = True
    return {"key": key, "width": w, "height": h, "caption": "a thing",
            "regions": [{"phrase": "a square", "box": [2, 1, 5, 4], "mask": rle_encode(m)}]}


def test_round_trip_and_atomic_close(tmp_path):
    path = tmp_path / "s-000.tar"
    with ShardWriter(path) as w:
        w.write(b"JPEGBYTES1", _record("a1"))
        assert not path.exists()  # only the partial file exists until close
        w.write(b"JPEGBYTES2", _record("a2"))
    samples = list(iter_shard(path))
    assert [s[0] for s in samples] == ["a1", "a2"]
    assert samples[1][1] == b"JPEGBYTES2" and samples[0][2] == _record("a1")
    assert validate_record(samples[0][2]) == []


def test_failed_shard_leaves_nothing(tmp_path):
    path = tmp_path / "s.tar"
    with pytest.raises(RuntimeError):
        with ShardWriter(path) as w:
            w.write(b"x", _record())
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_validation_names_problems(tmp_path):
    r = _record()
    r["regions"][0]["box"] = [5, 1, 2, 4]
    assert validate_record(r) == ["region 0: box [5, 1, 2, 4] is degenerate or outside the 8x6 image"]
    r = _record()
    r["regions"][0]["mask"] = {"size": [6, 8], "counts": "!!!"}
    assert validate_record(r)[0].startswith("region 0: mask does not decode")
    r = _record()
    r["regions"][0]["mask"] = rle_encode(np.zeros((6, 8), bool))
    assert validate_record(r) == ["region 0: mask is empty"]
    assert validate_record({"key": "x"}) == ["field 'width' missing or not int", "field 'height' missing or not int",
                                             "field 'caption' missing or not str", "field 'regions' missing or not list"]
    with pytest.raises(ValueError, match="record: invalid"):
        w = ShardWriter(tmp_path / "unused.tar")
        w.write(b"", {"key": "k"})
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_bad_json_member_is_named(tmp_path):
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in (("k.jpg", b"x"), ("k.json", b"{not json")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="member k.json is not valid JSON"):
        list(iter_shard(path))
