"""The one config-argument grammar (`recipes.parse_arg`) and the one config loader."""
import os

import pytest

from kdjax import recipes
from kdjax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_positional_values_then_typed_keys_then_flags():
  a = recipes.parse_arg("resnet32x4,resnet8x4,epochs=3,lr=0.5,official", positional=("teacher", "student"),
                        epochs=240, lr=0.05, official=False, name="x")
  assert (a.teacher, a.student, a.epochs, a.lr, a.official, a.name) == ("resnet32x4", "resnet8x4", 3, 0.5,
                                                                       True, "x")
  assert isinstance(a.epochs, int) and isinstance(a.lr, float)
  b = recipes.parse_arg("", positional=("teacher", "student"), official=False)
  assert (b.teacher, b.student, b.official) == ("", "", False)
  assert recipes.parse_arg("official=false", official=True).official is False
  c = recipes.parse_arg("resnet8,wrn_16_1,resnet8,epochs=3", rest="networks", epochs=1)
  assert (c.networks, c.epochs) == (("resnet8", "wrn_16_1", "resnet8"), 3)


@pytest.mark.parametrize("arg, message", [
    ("a,b,c", "unexpected 'c'"),
    ("a,b,epoch=3", "unknown config argument 'epoch'"),
    ("a,b,epochs=three", "expected a int"),
    ("a,b,official=maybe", "expected true or false"),
])
def test_refuses_what_it_does_not_declare(arg, message):
  with pytest.raises(UserError, match=message):
    recipes.parse_arg(arg, positional=("teacher", "student"), epochs=240, official=False)


def test_configs_share_it():
  """ReviewKD's flags, SFTN's/FKD's third value, the online cohorts and the tiny-CNN rows share it."""
  review = recipes.load_config_module(os.path.join(ROOT, "configs", "reviewkd_cifar.py"))
  assert review.get_config("resnet32x4,resnet8x4,official,no_abf").to_dict() == review.get_config(
      "resnet32x4,resnet8x4,no_abf,official").to_dict()
  with pytest.raises(UserError, match="unknown recipe"):
    review.get_config("resnet32x4,resnet8x4,no_abf,no_hcl")  # one ablation at a time
  with pytest.raises(UserError, match="unknown teacher,student pair"):
    recipes.parse_pair("resnet32x4,resnet8x4,extra", "resnet32x4,resnet8x4", {"resnet32x4,resnet8x4": {}})
  dml = recipes.load_config_module(os.path.join(ROOT, "configs", "dml_cifar.py"))
  assert dml.get_config("resnet8, wrn_16_1").model == "resnet8+wrn_16_1"
  tiny = recipes.load_config_module(os.path.join(ROOT, "configs", "tiny_cnn_cifar10.py"))
  assert tiny.get_config("kd,t=5").kd.temperature == 5.0


def test_load_config_module_refuses_a_non_python_file(tmp_path):
  path = tmp_path / "config.yaml"
  path.write_text("model: resnet8\n")
  with pytest.raises(UserError, match="cannot load config file"):
    recipes.load_config_module(str(path))
