"""dvc.yaml's code deps are exactly what each stage runs, and each curriculum stage reruns only what it changes."""

import pytest
import yaml

from tests.support.code_deps import ROOT, closure, declared_code_deps, dvc_stages, rel, stage_module

STAGES = dvc_stages()


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_code_deps_equal_the_stage_module_and_its_imports(stage):
    declared = declared_code_deps(STAGES[stage])
    imported = closure(stage_module(stage))
    missing, extra = rel(imported - declared), rel(declared - imported)
    assert not missing and not extra, (
        f"dvc.yaml stage {stage}: add {missing}, remove {extra} "
        "(python -m tests.support.code_deps prints the right lists)"
    )


def test_closure_follows_function_level_imports(tmp_path):
    """The import scan sees lazy imports inside functions, which is where stages keep their heavy ones."""
    files = rel(closure("mugv.stages.pretrain"))
    assert "mugv/stages/pretrain.py" in files
    assert any(f.startswith("mugv/models/dit/") for f in files)
    assert "mugv/cli.py" not in files


def _pretrain_stage():
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["pretrain"]


def test_each_curriculum_stage_depends_on_its_own_params_only():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    group = _pretrain_stage()
    names = [s["name"] for s in params["pretrain"]["stages"]]
    assert list(group["foreach"]) == names, "dvc.yaml pretrain items must follow params pretrain.stages in order"
    for key, item in group["foreach"].items():
        assert names[item["index"]] == key
    declared = group["do"]["params"]
    assert "pretrain" not in declared and "pretrain.stages" not in declared
    assert "pretrain.stages.${item.index}" in declared
    # every other key of the section is still a dependency
    others = {f"pretrain.{k}" for k in params["pretrain"] if k != "stages"}
    assert others <= set(declared), f"missing params deps: {sorted(others - set(declared))}"


def test_checkpoints_persist_and_only_the_release_is_cached():
    outs = {}
    for out in _pretrain_stage()["do"]["outs"]:
        path, opts = (next(iter(out.items())) if isinstance(out, dict) else (out, {}))
        outs[path.rsplit("/", 1)[-1]] = opts
    assert outs["checkpoints"] == {"persist": True, "cache": False}
    assert outs["release"] == {}
