"""README "Bring your own data": a folder of real JPEG/PNG files (mixed sizes and modes, one
corrupt file, no split subfolders) -> convert-folder -> train -> eval, through the CLI."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from glofnd_jax import cli


def test_folder_converts_trains_and_evaluates(tmp_path, capsys):
  rng = np.random.default_rng(0)
  photos = tmp_path / "photos"
  for label, name in enumerate(("circle", "square", "stripe")):
    (photos / name).mkdir(parents=True)
    for k in range(8):
      h, w = 10 + k, 12 + 2 * label
      pixels = rng.integers(0, 64, (h, w, 3), np.uint8) + np.uint8(60 * label)
      image = Image.fromarray(pixels)
      image = image.convert("L") if k % 3 == 0 else image.convert("RGBA") if k % 3 == 1 else image
      image.save(photos / name / f"{k}.{'png' if k % 2 else 'jpg'}" if image.mode != "RGBA"
                 else photos / name / f"{k}.png")
  buffer = io.BytesIO()
  Image.new("RGB", (16, 16)).save(buffer, format="JPEG")
  (photos / "circle" / "broken.jpg").write_bytes(buffer.getvalue()[:100])
  data = tmp_path / "data"
  assert cli.main(["convert-folder", str(photos), str(data), "--val-fraction", "0.15",
                   "--test-fraction", "0.25"]) == 0
  assert "broken.jpg" in capsys.readouterr().out
  report = json.loads((data / "conversion_report.json").read_text())
  assert [s["path"] for s in report["skipped"]] == ["circle/broken.jpg"]
  workdir = tmp_path / "run"
  train = ["train", "--config", "digits_sogclr_glofnd", "--workdir", str(workdir),
           "--config.data.name=arrayrecord", f"--config.data.data_dir={data}",
           "--config.data.image_size=8", "--config.data.channels=3", "--config.batch_size=8",
           "--config.epochs=1", "--config.glofnd.start_update_epoch=0",
           "--config.glofnd.start_mask_epoch=0", "--config.model.proj_hidden_dim=16",
           "--config.model.proj_dim=8", "--config.eval.knn_k=3", "--config.data.read_threads=0",
           "--config.eval.probe_fractions=(1.0,)"]
  assert cli.main(train) == 0
  out = capsys.readouterr().out
  assert "8x8x3 images" in out and "resized from" in out and "kNN top-1" in out
  assert cli.main(["eval", "--workdir", str(workdir)]) == 0
  assert "Linear probe" in capsys.readouterr().out
