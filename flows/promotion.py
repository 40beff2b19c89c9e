"""Prefect flow that judges the evaluated candidate against the champion and publishes the decision as a markdown artifact.

It runs after evaluation (the `promotion` deployment); the rule is params.yaml's `promotion` section and the
work is `mugv.registry.promotion.promote`. A candidate that loses is a normal outcome (the flow succeeds,
the artifact says why); a candidate that cannot be judged (no evaluation, no such model) fails the flow.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from mugv.config import load_params
from mugv.registry.promotion import decision_markdown, promote

ARTIFACT_KEY = "promotion-decision"


@flow(name="mugv-promotion", log_prints=True)
def promotion_flow(model: str | None = None, version: int | None = None, params_file: str = "params.yaml") -> dict:
    """Promote `version` (else the candidate alias) of `model` (else params' registered model) when it wins."""
    from prefect.artifacts import create_markdown_artifact

    params = load_params(params_file)
    name = model or params.project.tracking.registered_model
    decision = promote(params.promotion, params.project.tracking, name, version)
    report = decision_markdown(decision, name)
    create_markdown_artifact(markdown=report, key=ARTIFACT_KEY, description=f"{name}: {decision.outcome}")
    get_run_logger().info("%s: %s (%s)", name, decision.outcome, decision.reason)
    return decision.model_dump(mode="json")


if __name__ == "__main__":
    promotion_flow()
