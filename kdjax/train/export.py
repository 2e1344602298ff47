"""The end of a run: the final model (and each cohort member) as model directories, results.json."""
from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections

from kdjax import checkpoint as ckpt_lib
from kdjax import data as data_lib


def run(config: ml_collections.ConfigDict, dataset: data_lib.Dataset, workdir: str, variables: dict,
        history: dict, devices, t_start: float, arch: str | None = None) -> dict[str, Any]:
  """Writes the final model `variables` (of `arch`, default config.model; and each cohort member)
  and results.json; returns the results."""
  last = history["epochs"][-1] if history["epochs"] else {}
  last_top1 = last.get("test_top1", float("nan"))
  ckpt_lib.save_model(os.path.join(workdir, "model"), variables,
                      model_meta(config, dataset, config.epochs, last_top1, arch=arch))
  members = members_of(config, dataset, workdir, variables, last.get("members_test_top1"))
  history["wall_seconds"] = history.get("wall_seconds", 0.0) + (time.time() - t_start)
  results = {
      "method": config.method, "teacher": config.teacher.arch or (list(config.teachers) or None),
      "student": config.model,
      "dataset": dataset.name, "epochs": config.epochs, "seed": config.seed,
      "best_top1": history["best_top1"], "best_epoch": history["best_epoch"],
      "last_top1": last_top1, "teacher_top1": history.get("teacher_top1"),
      "wall_seconds": history["wall_seconds"],
      "images_per_second": history["train_images"] / max(history["train_seconds"], 1e-9),
      "devices": f"{len(devices)} x {devices[0].device_kind}",
      "config": config.to_dict(),
  }
  if members:
    results["members"] = members
  write_results(workdir, results)
  return results


def write_results(workdir: str, results: dict[str, Any]) -> None:
  """`<workdir>/results.json`, written whole or not at all (process 0 only)."""
  if jax.process_index() == 0:
    path = os.path.join(workdir, "results.json")
    with open(path + ".tmp", "w") as f:
      json.dump(results, f, indent=2, default=str)
    os.replace(path + ".tmp", path)


def members_of(config, dataset, workdir: str, variables: dict, last_tops) -> list[dict]:
  """Exports each member of a cohort model as its own model dir; their results entries."""
  if "+" not in config.model:
    return []
  names = config.model.split("+")
  history_path = os.path.join(workdir, "metrics.jsonl")
  per_epoch = []
  if os.path.exists(history_path):
    with open(history_path) as f:
      per_epoch = [json.loads(line).get("members_test_top1") for line in f if line.strip()]
  out = []
  for k, arch in enumerate(names):
    member = {"params": variables["params"][f"member{k}"],
              "batch_stats": variables["batch_stats"].get(f"member{k}", {})}
    meta = dict(model_meta(config, dataset, config.epochs, last_tops[k] if last_tops else float("nan")),
                arch=arch)
    path = os.path.join(workdir, "members", f"member{k}")
    ckpt_lib.save_model(path, member, meta)
    tops = [e[k] for e in per_epoch if e]
    out.append({"arch": arch, "model_dir": path, "last_top1": last_tops[k] if last_tops else None,
                "best_top1": max(tops) if tops else None})
  return out


def model_meta(config, dataset: data_lib.Dataset, epoch: int, top1: float, arch: str | None = None) -> dict:
  """What a model directory records (`arch`: the network it holds, default config.model): enough
  to refuse it for the wrong use."""
  return {"arch": arch or config.model, "num_classes": dataset.num_classes, "dataset": dataset.name,
          "mean": list(dataset.mean), "std": list(dataset.std), "epoch": epoch, "test_top1": top1,
          "method": config.method, "image_size": int(data_lib.image_shape(dataset)[0])}
