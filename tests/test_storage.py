import h5py
import numpy as np
import pytest

from landscape.errors import LandscapeError
from landscape.storage import FORMAT_VERSION, Surface, read_surface, write_surface


def _surface(ndim=2):
    y = np.linspace(-1, 1, 3) if ndim == 2 else None
    s = Surface(x=np.linspace(0, 1, 4), y=y, attrs={"settings": '{"a": 1}', "model": "m", "n": {"train": 5}})
    loss = s.add_metric("train_loss")
    loss.flat[[0, 2]] = [0.0, -1.0]  # 0 and -1 are real values, not sentinels
    s.done.flat[[0, 2]] = True
    s.dir_file = "dirs.h5"
    return s


@pytest.mark.parametrize("ndim", [1, 2])
def test_round_trip(tmp_path, ndim):
    s = _surface(ndim)
    write_surface(tmp_path / "s.h5", s)
    back = read_surface(tmp_path / "s.h5")
    assert back.shape == s.shape == ((3, 4) if ndim == 2 else (4,))
    np.testing.assert_array_equal(back.done, s.done)
    np.testing.assert_array_equal(back.metrics["train_loss"], s.metrics["train_loss"])  # NaN where not done
    assert back.metrics["train_loss"].flat[2] == -1.0 and back.done.flat[2]
    assert back.settings == {"a": 1} and back.attrs["model"] == "m" and back.dir_file == "dirs.h5"
    assert back.attrs["format_version"] == FORMAT_VERSION
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["done"].dtype == np.uint8 and ("ycoordinates" in f) == (ndim == 2)


def test_failed_write_leaves_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "s.h5"
    write_surface(path, _surface())
    bad = _surface()
    bad.metrics["done"] = np.zeros(bad.shape)  # reserved name: the write fails half-way
    with pytest.raises(ValueError, match="reserved"):
        write_surface(path, bad)
    assert read_surface(path).done.sum() == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]


def test_read_errors(tmp_path):
    with pytest.raises(LandscapeError, match="does not exist"):
        read_surface(tmp_path / "nope.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(LandscapeError, match="not a readable HDF5"):
        read_surface(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["something"] = np.zeros(3)
    with pytest.raises(LandscapeError, match="xcoordinates"):
        read_surface(tmp_path / "other.h5")
