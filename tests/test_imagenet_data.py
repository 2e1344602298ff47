"""The imagenet2012 streaming pipeline under `tfds.testing.mock_data` (no ImageNet on this machine).

TFDS's own mock ignores split slices (every slice yields the same examples), which
would hide a sharding bug, so the sharding tests mock `_as_dataset` with a small
dataset that honours `train[a:b]` and whose label is the example's position: a
batch's `index` must then equal its `label`.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

import kdjax.data  # noqa: E402
from kdjax.data import imagenet  # noqa: E402

NUM = {"train": 24, "validation": 10}
CROP = 32


def _examples(split: str) -> list[dict]:
  """NUM[split] encoded JPEGs of random size (5..60 px, some very elongated); label = position."""
  rng = np.random.default_rng(0 if split == "train" else 1)
  out = []
  for i in range(NUM[split]):
    h, w = (int(v) for v in rng.integers(5, 60, size=2))
    if i % 7 == 3:
      h, w = 6, 58  # aspect far outside [3/4, 4/3]: RandomResizedCrop's fallback path
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    out.append({"image": tf.io.encode_jpeg(image).numpy(), "label": i,
                "file_name": f"{split}_{i}.JPEG"})
  return out


def _sliced_as_dataset(self, split, decoders=None, read_config=None, **kwargs):
  """A mocked `_as_dataset` that honours `split[a:b]` slices (TFDS's mock does not)."""
  del self, read_config, kwargs
  # The pipeline reads 'name' or 'name[a:b]' (absolute example positions).
  match = re.fullmatch(r"(\w+)(?:\[(\d*):(\d*)\])?", str(split))
  name, start, end = match.group(1), match.group(2), match.group(3)
  examples = _examples(name)[int(start) if start else 0:int(end) if end else None]
  ds = tf.data.Dataset.from_tensor_slices({
      "image": [e["image"] for e in examples],
      "label": np.array([e["label"] for e in examples], np.int64),
      "file_name": [e["file_name"] for e in examples]})
  if not (decoders and isinstance(decoders.get("image"), tfds.decode.SkipDecoding)):
    ds = ds.map(lambda ex: dict(ex, image=tf.io.decode_jpeg(ex["image"], channels=3)))
  return ds


@pytest.fixture
def sliced():
  with tfds.testing.mock_data(as_dataset_fn=_sliced_as_dataset):
    yield imagenet.load(data_dir="/tmp/kdjax-no-such-dir", image_size=CROP)


def _epoch(ds, **kw) -> list[dict]:
  args = dict(epoch=0, batch_size=4, seed=0, process_index=0, process_count=1)
  args.update(kw)
  return list(ds.train_batches(**args))


def test_load_returns_streaming_dataset_with_imagenet_constants():
  with tfds.testing.mock_data(num_examples=3):
    ds = kdjax.data.load("imagenet2012", data_dir="/tmp/kdjax-no-such-dir")
    assert isinstance(ds, imagenet.StreamingDataset)
    assert "imagenet2012" in kdjax.data.names()
    assert (ds.num_classes, ds.image_shape, ds.num_train) == (1000, (224, 224, 3), 3)
    assert ds.mean == (0.485, 0.456, 0.406) and ds.std == (0.229, 0.224, 0.225)
    (batch,) = list(ds.train_batches(epoch=0, batch_size=2, seed=0, process_index=0,
                                     process_count=1))
  assert batch["image"].shape == (2, 224, 224, 3) and batch["image"].dtype == np.uint8
  assert batch["label"].dtype == np.int32 and batch["index"].dtype == np.int32


def test_train_batches_shapes_dtypes_and_stable_index(sliced):
  batches = _epoch(sliced)
  assert sliced.num_train == 24 and sliced.num_test == 10
  assert len(batches) == sliced.train_steps(4) == 6
  for b in batches:
    assert b["image"].shape == (4, CROP, CROP, 3) and b["image"].dtype == np.uint8
    assert b["label"].shape == (4,) and b["label"].dtype == np.int32
    assert b["index"].dtype == np.int32
    np.testing.assert_array_equal(b["index"], b["label"])  # the id names the example
  seen = np.concatenate([b["index"] for b in batches])
  assert sorted(seen) == list(range(24))  # one epoch = every example once
  assert not np.array_equal(seen, np.arange(24))  # shuffled


def test_train_batches_deterministic_given_seed_and_epoch(sliced):
  a, b = _epoch(sliced), _epoch(sliced)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  other_epoch = _epoch(sliced, epoch=1)
  other_seed = _epoch(sliced, seed=1)
  flat = lambda bs, k: np.concatenate([x[k] for x in bs])
  assert not np.array_equal(flat(a, "index"), flat(other_epoch, "index"))
  assert not np.array_equal(flat(a, "index"), flat(other_seed, "index"))
  # Same example, another epoch: another crop/flip.
  order = np.argsort(flat(a, "index"))
  order_1 = np.argsort(flat(other_epoch, "index"))
  assert not np.array_equal(flat(a, "image")[order], flat(other_epoch, "image")[order_1])


def test_per_process_shards_are_disjoint_and_cover_the_epoch(sliced):
  per_process = [_epoch(sliced, process_index=p, process_count=2) for p in range(2)]
  ids = []
  for p, batches in enumerate(per_process):
    assert len(batches) == 6  # every process runs num_train // global_batch steps
    assert all(b["image"].shape == (2, CROP, CROP, 3) for b in batches)  # local batch 4 // 2
    got = np.concatenate([b["index"] for b in batches])
    start, end = imagenet.process_slice(24, p, 2)
    assert set(got) == set(range(start, end))  # only its own slice was read
    ids.append(set(got))
  assert not ids[0] & ids[1] and ids[0] | ids[1] == set(range(24))


def test_eval_batches_center_crop_and_padding(sliced):
  per_process = [list(sliced.eval_batches(batch_size=4, process_index=p, process_count=2))
                 for p in range(2)]
  # Shares of 5: ceil(5 / 2) = 3 batches of 2 on both processes, one padding row each.
  assert [len(b) for b in per_process] == [3, 3]
  labels = np.concatenate([b["label"] for bs in per_process for b in bs])
  assert sorted(labels[labels >= 0]) == list(range(10)) and (labels == -1).sum() == 2
  for bs in per_process:
    for b in bs:
      assert b["image"].shape == (2, CROP, CROP, 3) and b["image"].dtype == np.uint8
      assert (b["image"][b["label"] < 0] == 0).all()
  # Evaluation is deterministic (no augmentation).
  again = list(sliced.eval_batches(batch_size=4, process_index=0, process_count=2))
  for x, y in zip(per_process[0], again):
    np.testing.assert_array_equal(x["image"], y["image"])


def test_eval_image_is_resize_then_center_crop():
  # A 40x80 image whose columns encode their x coordinate: after Resize(36) (short side 40 -> 36,
  # long 80 -> 72) and CenterCrop(32), column j shows source column (20 + j + 0.5) * 80/72 - 0.5.
  x = np.tile(np.linspace(0, 255, 80)[None, :, None], (40, 1, 3)).astype(np.uint8)
  out = imagenet.eval_image(tf.io.encode_jpeg(x, quality=100), 32, 36).numpy()
  assert out.shape == (32, 32, 3)
  src = (np.arange(20, 52) + 0.5) * 80 / 72 - 0.5
  np.testing.assert_allclose(out[16, :, 0], np.interp(src, np.arange(80), x[0, :, 0]), atol=6)


def test_random_resized_crop_window_follows_torchvision_ranges():
  areas, ratios = [], []
  window = tf.function(imagenet.random_resized_crop_window)  # traced once: fast loop
  for i in range(200):
    top, left, h, w = window(tf.constant([300, 400]), tf.constant([0, i], tf.int64)).numpy()
    assert 0 <= top <= 300 - h and 0 <= left <= 400 - w and h > 0 and w > 0
    areas.append(h * w / (300 * 400))
    ratios.append(w / h)
  assert 0.07 < min(areas) < 0.2 and max(areas) > 0.8 and max(areas) <= 1.0
  assert min(ratios) > 0.74 and max(ratios) < 1.34
  assert np.std(np.log(ratios)) > 0.1  # ratios spread over the log-uniform range
  # An image far too wide for any ratio in range: the whole height, width = 4/3 height, centred.
  top, left, h, w = imagenet.random_resized_crop_window(
      tf.constant([6, 600]), tf.constant([0, 1], tf.int64)).numpy()
  assert (top, h, w, left) == (0, 6, 8, 296)


def test_missing_data_names_the_config_fields_and_readme(tmp_path):
  with pytest.raises(kdjax.data.DatasetNotFoundError) as e:
    kdjax.data.load("imagenet2012", data_dir=str(tmp_path))
  msg = str(e.value)
  assert "config.data.data_dir" in msg and "config.data.manual_dir" in msg
  assert 'README.md, section "ImageNet"' in msg and "ILSVRC2012_img_train.tar" in msg


def test_missing_archives_in_manual_dir_is_the_same_error(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  with pytest.raises(kdjax.data.DatasetNotFoundError) as e:
    kdjax.data.load("imagenet2012", data_dir=str(tmp_path / "tfds"), manual_dir=str(manual))
  assert str(manual) in str(e.value) and "config.data.manual_dir" in str(e.value)


def test_batch_not_divisible_by_processes(sliced):
  with pytest.raises(ValueError, match="not divisible"):
    _epoch(sliced, batch_size=5, process_count=2)
  assert math.isclose(imagenet.EVAL_RESIZE_RATIO * 224, 256)
