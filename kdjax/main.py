"""Command line: `python -m kdjax.main --config=configs/dkd_cifar.py[:TEACHER,STUDENT] [--workdir=DIR]`.

`kdjax train ...` (the console script, kdjax/cli.py) is the same command. A --config that is
not a file names a config shipped with kdjax: `--config=dkd_cifar.py` from any directory.

A thin absl wrapper around `kdjax.train.train_and_evaluate`, which Colab users and
tests call directly. Any field can be overridden: `--config.optim.lr=0.1`.

Several hosts: start the same command on every host; `jax.distributed.initialize()`
runs first when the launch has several processes (srun, mpirun, a Cloud TPU pod, or
explicitly `--coordinator_address=HOST:PORT --num_processes=N --process_id=I`).
"""
from __future__ import annotations

import difflib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from kdjax import cpu

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file, optionally with its argument: configs/dkd_cifar.py:resnet32x4,resnet8x4.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Run directory (checkpoints, logs, results.json); the run resumes from "
                               "it. Default: runs/<method>_<teacher>_<student>.")
_ACCEPT_CHANGE = flags.DEFINE_bool(
    "accept_config_change", False,
    "Resume a workdir although its run was started with another config (the new values apply "
    "from the resumed epoch on); without it such a resume is refused with the differing fields.")
_TRACEBACK = flags.DEFINE_bool(
    "traceback", False, "Debugging: let an error the trainer explains (bad config, damaged checkpoint, "
    "full disk, preemption) end with its Python traceback instead of the one-line message.")
_MULTIHOST = flags.DEFINE_enum(
    "multihost", "auto", ["auto", "on", "off"],
    "Call jax.distributed.initialize() before training. auto: when launched as several processes "
    "(--num_processes/JAX_NUM_PROCESSES > 1, srun with several tasks, mpirun, Cloud TPU pod "
    "workers listed in TPU_WORKER_HOSTNAMES); on: always (JAX detects the cluster); off: never.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 for a multi-process run; default "
    "$JAX_COORDINATOR_ADDRESS.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes of a multi-process run; default $JAX_NUM_PROCESSES.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's rank in [0, num_processes); default $JAX_PROCESS_ID.")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 0, "When training on the CPU: split it into this many XLA devices, the batch "
    "sharded over them as over GPUs (XLA:CPU runs large-image convolutions on one core; one "
    "device per core keeps every core busy). 0: one per usable core, as many as divide the batch "
    "sizes; 1: a single device. Ignored when XLA_FLAGS sets --xla_force_host_platform_device_count.")
flags.mark_flags_as_required(["config"])


def _fail(message: str, code: int = 2) -> None:
  """Ends the program with the message on stderr and exit code `code` (2: bad input)."""
  print(f"kdjax: error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def bundled_configs_dir() -> str:
  """Where the configs shipped with kdjax live: kdjax/configs when installed, else the repo's configs/."""
  here = os.path.dirname(os.path.abspath(__file__))
  installed = os.path.join(here, "configs")
  return installed if os.path.isdir(installed) else os.path.join(os.path.dirname(here), "configs")


def resolve_config_arg(spec: str) -> str:
  """`PATH[:ARG]` unchanged where PATH is a file, else the shipped config of that file name."""
  path, sep, arg = spec.partition(":")
  if os.path.exists(path):
    return spec
  bundled = os.path.join(bundled_configs_dir(), os.path.basename(path))
  return bundled + sep + arg if os.path.isfile(bundled) else spec


def _resolve_config_flag(argv: list[str]) -> list[str]:
  return [f"--config={resolve_config_arg(a.split('=', 1)[1])}" if a.startswith("--config=") else a
          for a in argv]


def _load_config_from_argv(argv: list[str]):
  """The config named by --config=PATH[:ARG] in `argv`, built without overrides (or None)."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return None
  path, _, arg = spec.partition(":")
  from kdjax import recipes  # pylint: disable=import-outside-toplevel  (after the flags set JAX up)
  module = recipes.load_config_module(path)
  return module.get_config(arg) if arg else module.get_config()


def unknown_field(argv: list[str]) -> str | None:
  """The message for the first `--config.a.b=...` override naming no config field, if any."""
  from kdjax import defaults as kd_defaults  # pylint: disable=import-outside-toplevel
  try:
    config = _load_config_from_argv(argv)
  except Exception:  # pylint: disable=broad-except
    return None
  if config is None:
    return None
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    parts = arg[len("--config."):].split("=", 1)[0].split(".")
    moved = kd_defaults.MOVED.get(".".join(parts))
    if moved and ".".join(parts[:-1]) in config and parts[-1] not in config[".".join(parts[:-1])]:
      return f"config.{'.'.join(parts)} (from {arg.split('=', 1)[0]}) has moved: it is now {moved}."
    node, prefix = config, "config"
    for part in parts:
      keys = sorted(node.keys()) if hasattr(node, "keys") else []
      if part not in keys:
        close = difflib.get_close_matches(part, keys, n=1)
        hint = f" Did you mean {prefix}.{close[0]}?" if close else ""
        return (f"unknown config field {prefix}.{part} (from {arg.split('=', 1)[0]}).{hint} "
                f"Valid fields of {prefix}: {', '.join(keys)}.")
      node, prefix = node[part], f"{prefix}.{part}"
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with config errors turned into one clear line and exit code 2."""
  argv = _resolve_config_flag(argv)
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    from kdjax.errors import UserError  # pylint: disable=import-outside-toplevel
    cause = e.__cause__ or e.__context__
    if isinstance(cause, UserError):
      # config_flags re-raises get_config's error with the traceback in its text.
      _fail(str(cause).rsplit("UserError: ", 1)[-1].strip())
    unknown = unknown_field(argv)
    if unknown:
      _fail(unknown)
    if isinstance(e, OSError) or isinstance(cause, OSError):
      _fail(f"cannot load the config file ({cause or e})".replace("\n", " "))
    if isinstance(e, flags.UnrecognizedFlagError):
      _fail(f"{e}. Run with --helpshort to list the flags.")
    _fail(str(e).strip().splitlines()[0])
  return argv


def distributed_args(mode: str, coordinator_address: str | None, num_processes: int | None,
                     process_id: int | None, env=None) -> dict | None:
  """The `jax.distributed.initialize` arguments for this launch, or None for a single process.

  Values come from the flags, else JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JAX_PROCESS_ID; what is left unset (all of it under srun, mpirun or on a TPU pod) JAX's
  own cluster detection fills in.
  """
  env = os.environ if env is None else env
  get_int = lambda name: int(env[name]) if env.get(name, "").strip() else None
  coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
  num_processes = num_processes if num_processes is not None else get_int("JAX_NUM_PROCESSES")
  process_id = process_id if process_id is not None else get_int("JAX_PROCESS_ID")
  explicit = {k: v for k, v in (("coordinator_address", coordinator_address),
                                ("num_processes", num_processes), ("process_id", process_id))
              if v is not None}
  if mode == "off":
    return None
  if mode == "on":
    return explicit
  if num_processes is not None:
    if num_processes <= 1:
      return None
    missing = sorted({"coordinator_address", "process_id"} - set(explicit))
    if missing and not _cluster_launched(env):
      raise ValueError(f"--num_processes={num_processes} also needs "
                       f"{' and '.join('--' + m for m in missing)} (or the JAX_* variables).")
    return explicit
  return explicit if _cluster_launched(env) else None


def _cluster_launched(env) -> bool:
  """Whether a launcher started several copies of this program (Slurm srun, Open MPI, TPU pod)."""
  def count(name: str) -> int:
    try:
      return int(env.get(name, "1").split("(")[0] or 1)  # SLURM_STEP_NUM_TASKS may read '8(x2)'
    except ValueError:
      return 1
  tpu_workers = [w for w in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if w.strip()]
  return count("SLURM_STEP_NUM_TASKS") > 1 or count("OMPI_COMM_WORLD_SIZE") > 1 or len(tpu_workers) > 1


def _initialize_distributed() -> None:
  """`jax.distributed.initialize()` when this is one of several processes; before any device use."""
  try:
    args = distributed_args(_MULTIHOST.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                            _PROCESS_ID.value)
  except ValueError as e:
    _fail(str(e))
  if args is None:
    return
  import jax  # pylint: disable=import-outside-toplevel
  jax.distributed.initialize(**args)
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def main(argv: list[str]) -> None:
  """Trains and evaluates; bad input ends with one line on stderr and exit code 2."""
  try:
    _main(argv)
  except KeyboardInterrupt:  # Ctrl-C before the trainer's handlers were in place
    _fail("interrupted before training started; nothing was written. Rerun the same command.", 130)


def _main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:
    # Orbax and TFDS log every save and read at INFO; keep the console for progress.
    logging.set_verbosity(logging.WARNING)
  try:
    config = _CONFIG.value
    config.method  # pylint: disable=pointless-statement  (a config that failed to load raises here)
  except OSError as e:
    _fail(f"cannot load the config file ({e})".replace("\n", " "))
  cpu.split_cpu(config, _CPU_DEVICES.value)  # before any JAX backend exists
  _initialize_distributed()
  # Imported here so that `--help` and flag errors are fast.
  import jax  # pylint: disable=import-outside-toplevel
  from kdjax import train  # pylint: disable=import-outside-toplevel
  from kdjax.errors import UserError  # pylint: disable=import-outside-toplevel
  workdir = _WORKDIR.value or train.default_workdir(config)
  logging.info("workdir: %s\nconfig:\n%s", workdir, config)
  try:
    results = train.train_and_evaluate(config, workdir, accept_config_change=_ACCEPT_CHANGE.value)
  except UserError as e:
    if _TRACEBACK.value:
      raise
    if getattr(e, "hard_exit", False):  # a full disk: Orbax's failed writer threads would print at exit
      print(f"kdjax: error: {e}", file=sys.stderr, flush=True)
      sys.stdout.flush()
      os._exit(2)  # pylint: disable=protected-access
    _fail(str(e), getattr(e, "exit_code", 2))  # a preempted run: 128 + the signal's number
  summary = f"[kdjax] done: {results['method']} {results['student']} on {results['dataset']}: "
  if "seeds" in results:  # several seeds in one program: their mean ± std
    best, last = results["best_top1"], results["last_top1"]
    summary += (f"{len(results['seeds'])} seeds, best top-1 {best['mean']:.2f} ± {best['std']:.2f}%, "
                f"last {last['mean']:.2f} ± {last['std']:.2f}%")
  else:
    summary += (f"best top-1 {results['best_top1']:.2f}% (epoch {results['best_epoch']}), "
                f"last {results['last_top1']:.2f}%")
  teacher_top1 = results.get("teacher_top1")
  if isinstance(teacher_top1, list):
    summary += f"; teachers {results['teacher']} " + ", ".join(f"{t:.2f}%" for t in teacher_top1)
  elif teacher_top1 is not None:
    summary += f"; teacher {results['teacher']} {teacher_top1:.2f}%"
  if jax.process_index() == 0:  # one summary per run, not one per host
    print(summary + f". Results: {workdir}/results.json", flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
