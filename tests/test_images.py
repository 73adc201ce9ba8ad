"""Image-folder data: declared preprocessing, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import fixtures
import onnxopt
from onnxopt.cli import main
from onnxopt.data import input_specs
from onnxopt.errors import BadDataError, UsageError
from onnxopt.images import ImageFolderData, ImagePreprocess, parse_size


@pytest.fixture
def image_dir(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_preprocessing_is_applied(image_dir):
    specs = input_specs(fixtures.get("demo"))
    prep = ImagePreprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), bgr=True)
    data = ImageFolderData(image_dir, specs, prep)
    assert len(data) == 6
    feed = data.get(0)["image"]
    assert feed.shape == (1, 3, 32, 32) and feed.dtype == np.float32
    raw = np.asarray(Image.open(image_dir / "0.png").convert("RGB").resize((32, 32), Image.BILINEAR), np.float32)
    expected = ((raw[..., ::-1] / 255.0 - 0.5) / 0.25).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(feed, expected, rtol=1e-6, atol=1e-6)


def test_size_from_flag_when_dynamic(image_dir):
    specs = input_specs(fixtures.get("dynamic_batch"))
    with pytest.raises(UsageError, match="--image-size"):
        ImageFolderData(image_dir, specs, ImagePreprocess())
    data = ImageFolderData(image_dir, specs, ImagePreprocess(size=(24, 20)))
    assert next(iter(data))["images"].shape == (1, 3, 24, 20)
    assert parse_size("64") == (64, 64)


def test_errors(tmp_path, image_dir):
    specs = input_specs(fixtures.get("demo"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadDataError, match="no images"):
        ImageFolderData(empty, specs, ImagePreprocess())
    with pytest.raises(BadDataError, match="exactly one 4-D float input"):
        ImageFolderData(image_dir, input_specs(fixtures.get("multi_output")), ImagePreprocess())
    (image_dir / "broken.png").write_bytes(b"\x89PNG garbage")
    data = ImageFolderData(image_dir, specs, ImagePreprocess())
    with pytest.raises(BadDataError, match="cannot read image"):
        data.get(data.files.index(image_dir / "broken.png"))


def test_image_folder_validates_a_run(image_dir, tmp_path, capsys):
    res = onnxopt.optimize(fixtures.get("demo"), validation_data=image_dir,
                           image_preprocess=ImagePreprocess(mean=(0.5,) * 3, std=(0.5,) * 3))
    assert not res.report.validation_synthetic and "6 samples" in res.report.validation_data
    demo = tmp_path / "demo.onnx"
    fixtures.save("demo", demo)
    code = main([str(demo), str(tmp_path / "o.onnx"), "--validation-data", str(image_dir), "--mean", "0.5,0.5,0.5",
                 "--std", "0.5,0.5,0.5", "--bgr", "-q"])
    assert code == 0
    code = main([str(demo), str(tmp_path / "o2.onnx"), "--validation-data", str(image_dir), "--std", "0,1,1"])
    assert code == 2 and "non-zero" in capsys.readouterr().err
