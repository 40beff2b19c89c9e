"""Gated promotion: champion moves only on a win, every decision is on both versions and a run, rollback undoes it."""

from __future__ import annotations

import json
import shutil

import pytest

from mugv import tracking
from mugv.registry.promotion import (
    Guard, PromotionConfig, PromotionError, decide_promotion, promote, rollback,
)

MODEL = "dit"
GOOD = {"reward_mean": 0.60, "background_mean": 0.80, "flow_loss_mean": 0.50}


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """An MLflow SQLite file with its tables made once (making them takes seconds): each test starts from a copy."""
    import mlflow

    path = tmp_path_factory.mktemp("store") / "mlruns.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracker(local_tracking, empty_store):
    """local_tracking (a fresh project folder as the cwd) with an empty store already in it."""
    shutil.copy(empty_store, "mlruns.db")
    return local_tracking


def _client(tracker):
    return tracking._mlflow(tracker).MlflowClient()


def _register(tracker, tmp_path, metrics: dict | None, alias: str | None = "candidate", run_metrics=None,
              eval_params=None) -> str:
    """A model version whose evaluation left `metrics` as eval.* tags (None: never evaluated); its number."""
    client = _client(tracker)
    if not client.search_registered_models(filter_string=f"name = '{MODEL}'"):
        client.create_registered_model(MODEL)
    version = str(client.create_model_version(MODEL, source=str(tmp_path)).version)
    if alias:
        client.set_registered_model_alias(MODEL, alias, version)
    if metrics is not None:
        tags = {f"eval.{k}": f"{v:.4g}" for k, v in metrics.items()}
        if run_metrics is not None or eval_params is not None:
            with tracking.start_stage_run("evaluate", tracker, params=eval_params) as ev:
                ev.log_metrics(run_metrics or {})
            tags["eval.run_id"] = ev.run_id
        mv = _client(tracker).get_model_version(MODEL, version)
        tracking.tag_model_version(mv, tags, tracker)
    return version


def _tags(tracker, version: str) -> dict:
    return _client(tracker).get_model_version(MODEL, version).tags


def _champion(tracker) -> str | None:
    mv = tracking.alias_version(MODEL, "champion", tracker)
    return None if mv is None else str(mv.version)


def test_decide_is_a_pure_rule_with_its_numbers():
    cfg = PromotionConfig()
    first = decide_promotion(GOOD, None, cfg)
    assert first.outcome == "promoted" and first.checks[0].rule == "first"
    assert decide_promotion(GOOD, None, cfg.model_copy(update={"first_wins": False})).outcome == "rejected"

    better = decide_promotion({**GOOD, "reward_mean": 0.65}, GOOD, cfg)
    assert better.outcome == "promoted"
    primary = better.checks[0]
    assert (primary.metric, primary.candidate, primary.champion) == ("reward_mean", 0.65, 0.60)
    assert primary.change == pytest.approx(0.05) and primary.limit == 0.0
    assert decide_promotion(GOOD, GOOD, cfg).outcome == "rejected"  # a tie keeps the champion

    margin = cfg.model_copy(update={"min_margin": 0.1})
    assert decide_promotion({**GOOD, "reward_mean": 0.65}, GOOD, margin).outcome == "rejected"
    # k standard errors of the difference: sqrt(0.03^2 + 0.04^2) = 0.05
    by_se = cfg.model_copy(update={"min_margin_se": 1.0})
    with_se = {**GOOD, "reward_se": 0.03}
    assert decide_promotion({**with_se, "reward_mean": 0.64}, {**GOOD, "reward_se": 0.04}, by_se).outcome == "rejected"
    won = decide_promotion({**with_se, "reward_mean": 0.66}, {**GOOD, "reward_se": 0.04}, by_se)
    assert won.outcome == "promoted" and won.checks[0].limit == pytest.approx(0.05)

    # guards: absolute tolerance in the metric's direction (flow loss: lower is better)
    worse_bg = decide_promotion({**GOOD, "reward_mean": 0.7, "background_mean": 0.74}, GOOD, cfg)
    assert worse_bg.outcome == "rejected" and "background_mean" in worse_bg.reason
    worse_loss = decide_promotion({**GOOD, "reward_mean": 0.7, "flow_loss_mean": 0.53}, GOOD, cfg)
    assert worse_loss.outcome == "rejected" and "flow_loss_mean" in worse_loss.reason
    slightly = decide_promotion({**GOOD, "reward_mean": 0.7, "flow_loss_mean": 0.51, "background_mean": 0.76}, GOOD, cfg)
    assert slightly.outcome == "promoted"
    lower_primary = cfg.model_copy(update={"primary": "flow_loss_mean", "higher_is_better": False, "guards": {}})
    assert decide_promotion({**GOOD, "flow_loss_mean": 0.4}, GOOD, lower_primary).outcome == "promoted"
    missing_guard = decide_promotion({"reward_mean": 0.9, "flow_loss_mean": 0.5}, GOOD, cfg)
    assert missing_guard.outcome == "rejected" and "the candidate has no background_mean" in missing_guard.reason


def test_first_candidate_becomes_champion_then_only_a_winner_moves_it(tracker, tmp_path):
    cfg = PromotionConfig()
    v1 = _register(tracker, tmp_path, GOOD)
    first = promote(cfg, tracker, MODEL)
    assert first.outcome == "promoted" and _champion(tracker) == v1
    assert _tags(tracker, v1)["mugv.promotion.compared_with"] == "none"

    v2 = _register(tracker, tmp_path, {**GOOD, "reward_mean": 0.55})  # loses on the primary metric
    lost = promote(cfg, tracker, MODEL)
    assert lost.outcome == "rejected" and _champion(tracker) == v1

    v3 = _register(tracker, tmp_path, {**GOOD, "reward_mean": 0.70, "background_mean": 0.60})  # a guard regresses
    guarded = promote(cfg, tracker, MODEL)
    assert guarded.outcome == "rejected" and "background_mean" in guarded.reason and _champion(tracker) == v1

    v4 = _register(tracker, tmp_path, {**GOOD, "reward_mean": 0.70})
    won = promote(cfg, tracker, MODEL)
    assert won.outcome == "promoted" and _champion(tracker) == v4
    assert _tags(tracker, v4)["mugv.promotion.previous_champion"] == v1
    assert str(tracking.alias_version(MODEL, "previous-champion", tracker).version) == v1
    assert promote(cfg, tracker, MODEL).outcome == "already-champion"

    # an explicit version is judged too: v2 against the champion v4
    assert promote(cfg, tracker, MODEL, version=v2).outcome == "rejected" and _champion(tracker) == v4
    assert (v2, v3) == ("2", "3")


def test_every_decision_is_tagged_on_both_versions_and_logged_as_a_run(tracker, tmp_path):
    cfg = PromotionConfig()
    v1 = _register(tracker, tmp_path, GOOD)
    promote(cfg, tracker, MODEL)
    v2 = _register(tracker, tmp_path, {**GOOD, "reward_mean": 0.40})
    decision = promote(cfg, tracker, MODEL)

    for version, role, other in ((v2, "candidate", v1), (v1, "champion", v2)):
        tags = _tags(tracker, version)
        assert tags["mugv.promotion.decision"] == "rejected" and tags["mugv.promotion.role"] == role
        assert tags["mugv.promotion.compared_with"] == other
        assert "reward_mean" in tags["mugv.promotion.reason"]
        assert json.loads(tags["mugv.promotion.rule"])["primary"] == "reward_mean"
        assert tags["mugv.promotion.time"].startswith("20") and tags["mugv.promotion.run_id"] == decision.run_id

    run = tracking.get_run(decision.run_id, tracker)
    assert run.data.tags["mugv.promotion.decision"] == "rejected" and run.info.run_name == "promote"
    assert run.data.params["promotion.primary"] == "reward_mean"
    assert run.data.params["promotion.guards.flow_loss_mean.tolerance"] == "0.02"
    assert run.data.metrics["candidate.reward_mean"] == pytest.approx(0.40)
    assert run.data.metrics["champion.reward_mean"] == pytest.approx(0.60)
    assert run.data.metrics["primary.reward_mean.change"] == pytest.approx(-0.20)


def test_rollback_restores_the_previous_champion_and_says_when_there_is_none(tracker, tmp_path):
    cfg = PromotionConfig()
    v1 = _register(tracker, tmp_path, GOOD)
    promote(cfg, tracker, MODEL)
    with pytest.raises(PromotionError, match=f"champion version {v1} of {MODEL} replaced no earlier champion"):
        rollback(cfg, tracker, MODEL)
    v2 = _register(tracker, tmp_path, {**GOOD, "reward_mean": 0.7})
    promote(cfg, tracker, MODEL)
    v3 = _register(tracker, tmp_path, {**GOOD, "reward_mean": 0.8})
    promote(cfg, tracker, MODEL)
    assert _champion(tracker) == v3

    back = rollback(cfg, tracker, MODEL)
    assert back.outcome == "rolled-back" and _champion(tracker) == v2
    assert (back.candidate_version, back.champion_version) == (v2, v3)
    assert _tags(tracker, v3)["mugv.promotion.decision"] == "rollback" and _tags(tracker, v3)["mugv.promotion.role"] == "demoted"
    assert _tags(tracker, v2)["mugv.promotion.decision"] == "rollback" and _tags(tracker, v2)["mugv.promotion.role"] == "restored"
    assert str(tracking.alias_version(MODEL, "previous-champion", tracker).version) == v1
    assert tracking.get_run(back.run_id, tracker).data.tags["mugv.promotion.decision"] == "rollback"

    assert rollback(cfg, tracker, MODEL).champion_version == v2 and _champion(tracker) == v1  # the chain, one step
    assert tracking.alias_version(MODEL, "previous-champion", tracker) is None
    with pytest.raises(PromotionError, match="nothing to roll back"):
        rollback(cfg, tracker, MODEL)


def test_refusals_name_the_problem(tracker, tmp_path):
    cfg = PromotionConfig()
    with pytest.raises(PromotionError, match="no registered model 'dit'"):
        promote(cfg, tracker, MODEL)
    v1 = _register(tracker, tmp_path, None)
    with pytest.raises(PromotionError, match=f"candidate version {v1} of dit has no evaluation reward_mean: "
                                             f"run `mugv evaluate models:/dit/{v1}` first"):
        promote(cfg, tracker, MODEL)
    assert _champion(tracker) is None and "mugv.promotion.decision" not in _tags(tracker, v1)
    _register(tracker, tmp_path, GOOD, alias=None)
    with pytest.raises(PromotionError, match="no alias 'champion'.*nothing to roll back"):
        rollback(cfg, tracker, MODEL)
    with pytest.raises(PromotionError, match="no version '9'"):
        promote(cfg, tracker, MODEL, version=9)
    with pytest.raises(PromotionError, match="no alias 'cand'"):
        promote(cfg.model_copy(update={"candidate_alias": "cand"}), tracker, MODEL)


def test_standard_errors_and_settings_come_from_the_evaluation_run(tracker, tmp_path):
    cfg = PromotionConfig(min_margin_se=2.0, guards={"background_mean": Guard(tolerance=0.05)})
    settings = {"evaluate": {"seeds": 4, "grid_scale": 2}}
    _register(tracker, tmp_path, GOOD, run_metrics={"reward_se": 0.03}, eval_params=settings)
    promote(cfg, tracker, MODEL)
    _register(tracker, tmp_path, {**GOOD, "reward_mean": 0.65}, run_metrics={"reward_se": 0.03},
              eval_params={"evaluate": {"seeds": 4, "grid_scale": 1}})  # grid_scale changes no number
    close = promote(cfg, tracker, MODEL)
    assert close.outcome == "rejected" and close.checks[0].limit == pytest.approx(2 * 0.03 * 2 ** 0.5)
    _register(tracker, tmp_path, {**GOOD, "reward_mean": 0.9}, run_metrics={"reward_se": 0.03},
              eval_params={"evaluate": {"seeds": 2, "grid_scale": 2}})
    with pytest.raises(PromotionError, match="different settings .*evaluate.seeds 2 vs 4"):
        promote(cfg, tracker, MODEL)


def test_only_the_last_curriculum_stage_is_the_candidate():
    from mugv.stages import pretrain

    cfg = pretrain.Config()
    names = [s.name for s in cfg.stages]
    alias, reason = pretrain.candidate_alias(cfg, names[-1])
    assert alias == "candidate" and names[-1] in reason
    for name in names[:-1]:
        alias, reason = pretrain.candidate_alias(cfg, name)
        assert alias == f"stage-{name}" and "the candidate is the last stage's" in reason


def test_cli_exit_status_says_promoted_or_kept_and_mistakes_are_one_line(tracker, tmp_path, capsys):
    from mugv.cli import PROMOTION_KEPT_EXIT, app

    def mugv(*args: str) -> tuple[int, str]:
        with pytest.raises(SystemExit) as e:
            app(list(args))
        captured = capsys.readouterr()
        return e.value.code, captured.out + captured.err

    model = tracker.registered_model  # params.yaml is absent from the cwd: every default, this model included
    status, output = mugv("promote")
    assert status == 2 and output.startswith(f"error: models:/{model}@candidate: no registered model '{model}'")
    assert len(output.strip().splitlines()) == 1
    client = _client(tracker)
    client.create_registered_model(model)
    for metrics, expected in ((GOOD, (0, "promoted")), ({**GOOD, "reward_mean": 0.1}, (PROMOTION_KEPT_EXIT, "rejected"))):
        version = str(client.create_model_version(model, source=str(tmp_path)).version)
        client.set_registered_model_alias(model, "candidate", version)
        for key, value in metrics.items():
            client.set_model_version_tag(model, version, f"eval.{key}", str(value))
        status, output = mugv("promote")
        assert status == expected[0] and expected[1] in output and "reward_mean" in output, output
    assert mugv("promote", "--version", "1")[0] == 0  # already the champion
    status, output = mugv("rollback")
    assert status == 2 and output.strip() == (f"error: champion version 1 of {model} replaced no earlier champion: "
                                              "nothing to roll back to")


@pytest.mark.slow
def test_promotion_flow_publishes_the_decision(tracker, tmp_path, prefect_harness):
    from prefect.client.orchestration import get_client

    from flows.promotion import ARTIFACT_KEY, promotion_flow

    client = _client(tracker)
    client.create_registered_model(tracker.registered_model)
    client.create_model_version(tracker.registered_model, source=str(tmp_path))
    client.set_registered_model_alias(tracker.registered_model, "candidate", "1")
    client.set_model_version_tag(tracker.registered_model, "1", "eval.reward_mean", "0.5")
    result = promotion_flow(model=tracker.registered_model)
    champion = tracking.alias_version(tracker.registered_model, "champion", tracker)
    assert result["outcome"] == "promoted" and str(champion.version) == "1"

    async def latest():
        async with get_client() as api:
            return await api.read_latest_artifacts()

    import asyncio

    artifact = next(a for a in asyncio.run(latest()) if a.key == ARTIFACT_KEY)
    assert "promoted" in artifact.data and "first evaluated candidate" in artifact.data
