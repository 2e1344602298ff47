"""Every field a run reads, at the CIFAR-100 protocol's values (docs/protocol.md §1.3).

It depends on nothing else in kdjax so that both `kdjax.recipes` (for configs) and the
method registry (a method built without a config) build the same base config.
"""
from __future__ import annotations

from typing import Any, Mapping

import ml_collections


# Fields of earlier versions that moved: the old name -> where the setting lives now. A
# command line naming the old field is told this; a workdir recorded with it still resumes.
MOVED = {
    "teacher.bn_mode": "config.<method>.teacher_bn_mode of the methods that offer it "
                       "(ofd: default batch_stats; reviewkd: default eval, batch_stats with ',official')",
    "data.views": "the method (KDCL takes one view per cohort member from config.model); no field",
}


def base_config(method_nodes: Mapping[str, Mapping[str, Any]]) -> ml_collections.ConfigDict:
  """The base config: one node per method (its published defaults), then every run field."""
  c = ml_collections.ConfigDict()
  for name, values in method_nodes.items():
    c[name] = dict(values)
  c.seed = 0
  # Several seeds in one compiled program, e.g. '0,1,2,3,4' (kdjax/train/seeds.py): each
  # trains the student that `seed` would, under <workdir>/seed<k>/. Empty: one run of `seed`.
  c.seeds = ""
  # How the seed axis is mapped: 'vmap' (batched), 'sequential' (one seed after another inside
  # the program, unrolled), 'auto' (vmap on GPU/TPU, sequential on the CPU).
  c.seeds_map = "auto"
  c.method = "vanilla"
  c.model = "resnet8x4"
  # Compute dtype of the networks ('float32' or 'bfloat16'); params, BN statistics
  # and losses stay float32.
  c.dtype = "float32"

  c.data = ml_collections.ConfigDict()
  c.data.name = "cifar100"
  c.data.data_dir = ""        # empty: TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR)
  c.data.download = False     # True: let TFDS download and prepare the data first
  c.data.manual_dir = ""      # TFDS manual_dir (imagenet2012's archives); empty: <data_dir>/downloads/manual
  c.data.crop_padding = 4
  c.data.flip = True
  # Resize every image to this side at load time (0: native). STL-10 (96 px) at 32
  # feeds a CIFAR student and teacher.
  c.data.image_size = 0
  # STL-10 only: add the 100000-image unlabelled split to the training set (label -1).
  c.data.unlabelled = False

  c.batch_size = 64           # global batch, split over all devices
  c.eval_batch_size = 500
  c.epochs = 240
  # The reference loaders keep the short last batch (782 steps/epoch at batch
  # 64); kdjax drops it (781) so every step has one static shape.
  c.drop_remainder = True

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 0.05
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.weight_decay = 5e-4   # coupled L2 on every parameter, as PyTorch SGD
  c.optim.lr_milestones = (150, 180, 210)  # LR x decay from these 0-indexed epochs on
  c.optim.lr_decay = 0.1

  c.teacher = ml_collections.ConfigDict()
  c.teacher.arch = ""
  # A kdjax run workdir, a model dir from `python -m kdjax.convert`, or a .pth file.
  # Empty: train the teacher first with the teacher recipe into `auto_workdir`.
  c.teacher.checkpoint = ""
  c.teacher.auto_workdir = "runs/teachers/{dataset}_{arch}"
  c.teacher.train_epochs = 240
  c.teacher.train_lr = 0.05
  c.teacher.train_lr_milestones = (150, 180, 210)
  # Batch and weight decay of the auto-trained teacher (0 / -1: the student's).
  c.teacher.train_batch_size = 0
  c.teacher.train_weight_decay = -1.0
  # Method of the auto-trained teacher run: 'vanilla', or e.g. 'sftn' (a
  # student-friendly teacher trained with branches of `config.model`).
  c.teacher.recipe = "vanilla"
  # Dataset of the auto-trained teacher ('' = the student's): a CIFAR-100 teacher for a
  # cross-dataset student (FKD).
  c.teacher.dataset = ""
  # Several teachers (an ensemble): each 'ARCH' or 'ARCH=CHECKPOINT'. Empty: the one
  # teacher of `config.teacher`. An ARCH without checkpoint is auto-trained with seed
  # `seed + i` into `teacher.auto_workdir` + '_seed<i>' (i > 0).
  c.teachers = ()

  c.log_every_steps = 100
  c.progress_bar = True
  return c
