"""Gated promotion: `champion` moves to an evaluated candidate only when it beats the champion; rollback undoes it.

The numbers are the ones `mugv evaluate` left on each model version: its `eval.<metric>` tags (the means,
the held-out flow loss) and, through the `eval.run_id` tag, the metrics of that evaluation run (standard
errors, VAE numbers) and its settings (two versions evaluated differently are not compared).
Every decision is recorded twice: as `mugv.promotion.*` tags on both versions (the latest decision each took
part in) and as an MLflow run named `promote` (params: the rule; metrics: both sides' numbers; tags: the
decision), which is the history. A promotion remembers the champion it replaced (tag
`mugv.promotion.previous_champion` on the new champion, alias `previous-champion`), and `rollback` walks back
along that chain one version at a time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from mugv.section import Section
from mugv.stages import evaluate as evaluate_stage

if TYPE_CHECKING:
    from mugv.tracking import TrackingConfig

TAG = "mugv.promotion."  # + decision, reason, compared_with, rule, time, role, run_id, previous_champion
PREVIOUS_CHAMPION = "previous_champion"  # the tag (under TAG) on a champion: the version it replaced
PREVIOUS_CHAMPION_ALIAS = "previous-champion"  # mirrors the current champion's PREVIOUS_CHAMPION tag
RUN_NAME = "promote"
EVAL_RUN_TAG = f"{evaluate_stage.TAG_PREFIX}run_id"
IGNORED_EVAL_SETTINGS = frozenset({"evaluate.grid_scale"})  # evaluate params that change no number


class PromotionError(LookupError):
    """Promotion or rollback cannot proceed (no such model or alias, no evaluation, nothing to roll back); one line."""


class Guard(Section):
    """A metric the candidate may not worsen by more than `tolerance`: absolute, in the metric's own units."""

    higher_is_better: bool = True
    tolerance: float = Field(0.0, ge=0)


def _default_guards() -> dict[str, Guard]:
    return {"background_mean": Guard(tolerance=0.05), "flow_loss_mean": Guard(higher_is_better=False, tolerance=0.02)}


class PromotionConfig(Section):
    """The `promotion` section of params.yaml: when a candidate replaces the champion.

    The candidate wins when its `primary` improves on the champion's by more than the larger of `min_margin`
    and `min_margin_se` standard errors of the difference, sqrt(se_candidate^2 + se_champion^2), where
    `<name>_se` is the standard error of `<name>_mean` (evaluate's names; the SE term is left out when either
    side has none). The improvement must exceed that margin strictly: a tie keeps the champion. Then no
    guard may worsen by more than its tolerance. With no champion, the candidate wins when `first_wins`.
    """

    primary: str = Field("reward_mean", description="the evaluation metric a candidate must beat the champion on")
    higher_is_better: bool = Field(True, description="direction of `primary`")
    min_margin: float = Field(0.0, ge=0, description="absolute improvement of `primary` to exceed")
    min_margin_se: float = Field(0.0, ge=0, description="improvement to exceed, in standard errors of the difference")
    guards: dict[str, Guard] = Field(default_factory=_default_guards,
                                     description="metric -> largest allowed worsening (absolute)")
    first_wins: bool = Field(True, description="with no champion yet, the first evaluated candidate becomes it")
    candidate_alias: str = "candidate"
    champion_alias: str = "champion"


class Check(BaseModel):
    """One rule applied: the numbers compared and whether the candidate passed it."""

    rule: Literal["first", "primary", "guard"]
    metric: str | None = None
    candidate: float | None = None
    champion: float | None = None
    change: float | None = None  # candidate vs champion, positive = better (the rule's direction)
    limit: float | None = None  # primary: the improvement to exceed; guard: the worsening allowed (negative)
    passed: bool
    reason: str


class Decision(BaseModel):
    """What promote or rollback decided: the outcome, one line why, every check with its numbers, the versions."""

    outcome: Literal["promoted", "rejected", "already-champion", "rolled-back"]
    reason: str
    checks: list[Check] = []
    candidate_version: str | None = None  # rollback: the version restored
    champion_version: str | None = None  # rollback: the version demoted
    run_id: str | None = None

    @property
    def champion_moved(self) -> bool:
        return self.outcome in ("promoted", "rolled-back")


def se_name(metric: str) -> str:
    """The standard error's name of a mean as evaluate writes it: `reward_mean` -> `reward_se`."""
    return f"{metric.removesuffix('_mean')}_se"


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _primary(candidate: Mapping[str, float], champion: Mapping[str, float], cfg: PromotionConfig) -> Check:
    metric = cfg.primary
    ours, theirs = _number(candidate.get(metric)), _number(champion.get(metric))
    if ours is None or theirs is None:
        side = "candidate" if ours is None else "champion"
        return Check(rule="primary", metric=metric, candidate=ours, champion=theirs, passed=False,
                     reason=f"the {side} has no {metric}")
    change = (ours - theirs) if cfg.higher_is_better else (theirs - ours)
    needed, how = cfg.min_margin, f"min_margin {cfg.min_margin:g}"
    se_ours, se_theirs = _number(candidate.get(se_name(metric))), _number(champion.get(se_name(metric)))
    if cfg.min_margin_se > 0 and se_ours is not None and se_theirs is not None:
        by_se = cfg.min_margin_se * math.hypot(se_ours, se_theirs)
        if by_se > needed:
            needed, how = by_se, f"{cfg.min_margin_se:g} SE of the difference"
    passed = change > needed
    verdict = "beats" if passed else "does not beat"
    return Check(rule="primary", metric=metric, candidate=ours, champion=theirs, change=change, limit=needed,
                 passed=passed, reason=f"{metric} {ours:.4g} vs {theirs:.4g}: {change:+.4g} {verdict} the margin "
                                       f"{needed:.4g} ({how})")


def _guard(metric: str, guard: Guard, candidate: Mapping[str, float], champion: Mapping[str, float]) -> Check:
    ours, theirs = _number(candidate.get(metric)), _number(champion.get(metric))
    if theirs is None:
        return Check(rule="guard", metric=metric, candidate=ours, passed=True,
                     reason=f"{metric} not measured on the champion: not checked")
    if ours is None:
        return Check(rule="guard", metric=metric, champion=theirs, passed=False,
                     reason=f"the candidate has no {metric} (the champion has)")
    change = (ours - theirs) if guard.higher_is_better else (theirs - ours)
    passed = change >= -guard.tolerance
    verdict = "within" if passed else "worse than"
    return Check(rule="guard", metric=metric, candidate=ours, champion=theirs, change=change, limit=-guard.tolerance,
                 passed=passed, reason=f"{metric} {ours:.4g} vs {theirs:.4g}: {change:+.4g}, {verdict} the "
                                       f"tolerance {guard.tolerance:g}")


def decide_promotion(candidate: Mapping[str, float], champion: Mapping[str, float] | None, cfg: PromotionConfig) -> Decision:
    """Promote or not, from both sides' evaluation numbers (champion None: there is none). Pure."""
    if champion is None:
        has_primary = _number(candidate.get(cfg.primary)) is not None
        passed = cfg.first_wins and has_primary
        why = ("no champion yet: the first evaluated candidate wins (first_wins)" if passed else
               f"the candidate has no {cfg.primary}" if not has_primary else "no champion yet and first_wins is off")
        check = Check(rule="first", metric=cfg.primary, candidate=_number(candidate.get(cfg.primary)), passed=passed,
                      reason=why)
        return Decision(outcome="promoted" if passed else "rejected", reason=why, checks=[check])
    checks = [_primary(candidate, champion, cfg)]
    checks += [_guard(metric, guard, candidate, champion) for metric, guard in cfg.guards.items()]
    failed = [c for c in checks if not c.passed]
    if failed:
        return Decision(outcome="rejected", reason="; ".join(c.reason for c in failed), checks=checks)
    return Decision(outcome="promoted", reason=f"{checks[0].reason}; every guard held", checks=checks)


# --------------------------------------------------------------------------- the registry side


class Evaluation(BaseModel):
    """A version's evaluation as evaluate recorded it: numbers, settings (None: run not found), run id."""

    metrics: dict[str, float]
    settings: dict[str, str] | None = None
    run_id: str | None = None


def read_evaluation(version, tracker: TrackingConfig | None = None) -> Evaluation:
    """The `eval.*` tags of a model version (rounded), completed and made exact by the metrics of the evaluation
    run they name; that run's `evaluate.*` params are the settings."""
    from mugv import tracking

    prefix = evaluate_stage.TAG_PREFIX
    tags = {k[len(prefix):]: v for k, v in version.tags.items() if k.startswith(prefix) and k != EVAL_RUN_TAG}
    metrics: dict[str, float] = {}
    settings = None
    run_id = version.tags.get(EVAL_RUN_TAG)
    if run_id:
        from mlflow.exceptions import MlflowException

        try:
            run = tracking.get_run(run_id, tracker)
        except MlflowException:  # the run was deleted: the tags are all there is
            run = None
        if run is not None:
            metrics.update(run.data.metrics)
            settings = {k: v for k, v in run.data.params.items()
                        if k.startswith(f"{evaluate_stage.NAME}.") and k not in IGNORED_EVAL_SETTINGS}
    from_tags = {k: number for k, v in tags.items() if (number := _number(v)) is not None}
    return Evaluation(metrics={**from_tags, **metrics}, settings=settings, run_id=run_id)  # the run's: unrounded


def _version(model_name: str, ref: str, tracker: TrackingConfig | None, what: str):
    """The model version behind `models:/<model_name><ref>`, else a PromotionError naming what the registry holds."""
    from mugv import tracking

    try:
        return tracking.model_versions_of(f"models:/{model_name}{ref}", tracker)[0]
    except tracking.ModelRefError as e:
        raise PromotionError(f"{e}; {what}") from None


def _differences(a: dict[str, str], b: dict[str, str]) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k} {a.get(k, '-')} vs {b.get(k, '-')}" for k in keys)


def _rule(cfg: PromotionConfig) -> str:
    return json.dumps(cfg.model_dump(mode="json"), separators=(",", ":"), sort_keys=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _record(decision: Decision, cfg: PromotionConfig, tracker: TrackingConfig | None, model_name: str,
            sides: dict[str, tuple[object | None, Evaluation | None]], roles: dict[str, str]) -> Decision:
    """Log the decision as a run (params: the rule, metrics: each side's numbers) and tag both versions with it."""
    from mugv import tracking

    label = {"rolled-back": "rollback"}.get(decision.outcome, decision.outcome)
    run_tags = {f"{TAG}decision": label, f"{TAG}reason": decision.reason[:5000], "mugv.model": model_name,
                f"{TAG}candidate": decision.candidate_version, f"{TAG}champion": decision.champion_version}
    with tracking.start_stage_run(RUN_NAME, tracker, params={"promotion": cfg.model_dump(mode="json")},
                                  tags=run_tags) as run:
        numbers = {f"{side}.{k}": v for side, (_, ev) in sides.items() if ev for k, v in ev.metrics.items()}
        for check in decision.checks:
            if check.metric and check.change is not None:
                numbers[f"{check.rule}.{check.metric}.change"] = check.change
        run.log_metrics(numbers)
        run.log_dict(decision.model_dump(mode="json"), "promotion/decision.json")
    decision = decision.model_copy(update={"run_id": run.run_id})
    common = {"decision": label, "reason": decision.reason[:5000], "rule": _rule(cfg), "time": _now(),
              "run_id": run.run_id}
    versions = {side: version for side, (version, _) in sides.items() if version is not None}
    for side, version in versions.items():
        other = next((v for s, v in versions.items() if s != side), None)
        tags = {**common, "role": roles[side], "compared_with": other.version if other is not None else "none"}
        tracking.tag_model_version(version, {f"{TAG}{k}": v for k, v in tags.items()}, tracker)
    return decision


def _client(tracker: TrackingConfig | None):
    import mlflow

    from mugv import tracking

    uri = tracking.resolve_uri(tracker)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _set_previous_champion(client, model_name: str, version, previous: str | None) -> None:
    """Point the PREVIOUS_CHAMPION tag of `version` (the champion) and the alias at `previous`, or clear both."""
    key = f"{TAG}{PREVIOUS_CHAMPION}"
    if previous is None:
        if key in version.tags:
            client.delete_model_version_tag(model_name, str(version.version), key)
        if PREVIOUS_CHAMPION_ALIAS in client.get_registered_model(model_name).aliases:
            client.delete_registered_model_alias(model_name, PREVIOUS_CHAMPION_ALIAS)
    else:
        client.set_model_version_tag(model_name, str(version.version), key, previous)
        client.set_registered_model_alias(model_name, PREVIOUS_CHAMPION_ALIAS, previous)


def promote(cfg: PromotionConfig, tracker: TrackingConfig | None, model_name: str,
            version: int | str | None = None) -> Decision:
    """Judge a candidate (`version`, else the candidate alias) against the champion; move the champion alias
    on a win; record the decision on both versions and as a run. PromotionError when it cannot judge."""
    from mugv import tracking

    ref = f"/{version}" if version is not None else f"@{cfg.candidate_alias}"
    candidate = _version(model_name, ref, tracker, "no candidate to promote")
    champion = tracking.alias_version(model_name, cfg.champion_alias, tracker)
    if champion is not None and str(champion.version) == str(candidate.version):
        return Decision(outcome="already-champion", candidate_version=str(candidate.version),
                        champion_version=str(champion.version),
                        reason=f"version {candidate.version} is already @{cfg.champion_alias}")
    ours = read_evaluation(candidate, tracker)
    if cfg.primary not in ours.metrics:
        raise PromotionError(f"candidate version {candidate.version} of {model_name} has no evaluation "
                             f"{cfg.primary}: run `mugv evaluate models:/{model_name}/{candidate.version}` first")
    theirs = read_evaluation(champion, tracker) if champion is not None else None
    if theirs is not None and cfg.primary not in theirs.metrics:
        raise PromotionError(f"champion version {champion.version} of {model_name} has no evaluation "
                             f"{cfg.primary}: run `mugv evaluate models:/{model_name}@{cfg.champion_alias}` first")
    if theirs is not None and ours.settings is not None and theirs.settings is not None:
        if ours.settings != theirs.settings:
            raise PromotionError(f"candidate version {candidate.version} and champion version {champion.version} "
                                 f"were evaluated with different settings ({_differences(ours.settings, theirs.settings)}): "
                                 "evaluate both with the same params")
    decision = decide_promotion(ours.metrics, theirs.metrics if theirs else None, cfg).model_copy(update={
        "candidate_version": str(candidate.version),
        "champion_version": str(champion.version) if champion is not None else None})
    if decision.champion_moved:
        client = _client(tracker)
        client.set_registered_model_alias(model_name, cfg.champion_alias, str(candidate.version))
        _set_previous_champion(client, model_name, candidate, decision.champion_version)
    return _record(decision, cfg, tracker, model_name, {"candidate": (candidate, ours), "champion": (champion, theirs)},
                   {"candidate": "candidate", "champion": "champion"})


def rollback(cfg: PromotionConfig, tracker: TrackingConfig | None, model_name: str) -> Decision:
    """Move the champion alias back to the champion the current one replaced; record it on both and as a run."""
    champion = _version(model_name, f"@{cfg.champion_alias}", tracker, "nothing to roll back")
    previous = champion.tags.get(f"{TAG}{PREVIOUS_CHAMPION}")
    if not previous:
        raise PromotionError(f"champion version {champion.version} of {model_name} replaced no earlier champion: "
                             "nothing to roll back to")
    restored = _version(model_name, f"/{previous}", tracker,
                        f"champion version {champion.version} replaced version {previous}, which is gone")
    client = _client(tracker)
    client.set_registered_model_alias(model_name, cfg.champion_alias, str(restored.version))
    _set_previous_champion(client, model_name, restored, restored.tags.get(f"{TAG}{PREVIOUS_CHAMPION}"))
    decision = Decision(outcome="rolled-back", candidate_version=str(restored.version),
                        champion_version=str(champion.version),
                        reason=f"rollback: @{cfg.champion_alias} back from version {champion.version} to version "
                               f"{restored.version}, the champion it replaced")
    return _record(decision, cfg, tracker, model_name,
                   {"restored": (restored, None), "demoted": (champion, None)},
                   {"restored": "restored", "demoted": "demoted"})


def decision_rows(decision: Decision) -> list[tuple[str, ...]]:
    """The decision as table rows: rule, metric, candidate, champion, change, limit, result."""
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.4g}"

    return [(c.rule, c.metric or "-", fmt(c.candidate), fmt(c.champion), fmt(c.change), fmt(c.limit),
             "pass" if c.passed else "FAIL") for c in decision.checks]


ROW_HEADER = ("rule", "metric", "candidate", "champion", "change (+ better)", "limit", "result")


def decision_markdown(decision: Decision, model_name: str) -> str:
    """The decision as a markdown report: outcome, versions, reason, the table of checks."""
    lines = [f"# {model_name}: {decision.outcome}", "",
             f"candidate version {decision.candidate_version or '-'}, champion version "
             f"{decision.champion_version or 'none'}", "", decision.reason, ""]
    rows = decision_rows(decision)
    if rows:
        lines += ["| " + " | ".join(ROW_HEADER) + " |", "|" + "---|" * len(ROW_HEADER)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
