"""Manifest fragments that hand the live canary weight to a mesh or a progressive-delivery tool.

Pure functions from the verified canary state (``GET /v1/canary/{model}``'s fields and the ramp of the
head record) to Kubernetes objects, printed as YAML by ``workbench canary render``:

- ``istio``: a VirtualService splitting the model's host between the baseline and candidate subsets by
  the weight, and the DestinationRule naming the subsets by the ``version`` label.
- ``argo``: an Argo Rollouts canary strategy whose ``setWeight`` steps follow the ramp, each followed by an
  analysis step, and the AnalysisTemplate whose web metric gates on ``result.verdict == "promote"``.
- ``flagger``: a Flagger Canary whose ``stepWeights`` follow the ramp and whose webhooks
  (``confirm-traffic-increase``, ``confirm-promotion``, ``rollback``) ask the workbench service.
- ``kserve``: an InferenceService patch setting ``canaryTrafficPercent`` to the weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from workbench import WorkbenchError

TARGETS = ("istio", "argo", "flagger", "kserve")
ANNOTATION = "canary-workbench.io"


@dataclass(frozen=True)
class MeshOptions:
    namespace: str = "default"
    service: str | None = None  # the Kubernetes service / host of the model (default: the model name)
    api_url: str = "http://canary-workbench.default.svc:8000"  # the workbench service, as the cluster sees it


def _k8s_name(model: str) -> str:
    name = "".join(c if c.isalnum() else "-" for c in model.lower()).strip("-")
    return name[:63] or "model"


def _annotations(state: dict) -> dict:
    return {
        f"{ANNOTATION}/decision-id": str(state["decision_id"]),
        f"{ANNOTATION}/weight": str(state["weight"]),
        f"{ANNOTATION}/baseline-version": str(state["baseline_version"]),
        f"{ANNOTATION}/candidate-version": str(state["candidate_version"]),
    }


def _meta(name: str, opts: MeshOptions, state: dict) -> dict:
    return {"name": name, "namespace": opts.namespace, "annotations": _annotations(state)}


def istio(state: dict, ramp: list[int], opts: MeshOptions) -> list[dict]:
    host = opts.service or _k8s_name(state["model"])
    w = int(state["weight"])
    vs = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": _meta(host, opts, state),
        "spec": {
            "hosts": [host],
            "http": [
                {
                    "route": [
                        {"destination": {"host": host, "subset": "baseline"}, "weight": 100 - w},
                        {"destination": {"host": host, "subset": "candidate"}, "weight": w},
                    ]
                }
            ],
        },
    }
    dr = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": _meta(host, opts, state),
        "spec": {
            "host": host,
            "subsets": [
                {"name": "baseline", "labels": {"version": str(state["baseline_version"])}},
                {"name": "candidate", "labels": {"version": str(state["candidate_version"])}},
            ],
        },
    }
    return [vs, dr]


def _api(opts: MeshOptions, path: str) -> str:
    return opts.api_url.rstrip("/") + path


def argo(state: dict, ramp: list[int], opts: MeshOptions) -> list[dict]:
    name = opts.service or _k8s_name(state["model"])
    template = f"{name}-canary-workbench"
    steps = []
    for w in ramp:
        if w >= 100:
            break  # after the last step Argo promotes the Rollout to 100 % itself
        steps += [{"setWeight": int(w)}, {"analysis": {"templates": [{"templateName": template}]}}]
    rollout = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": _meta(name, opts, state),
        "spec": {"strategy": {"canary": {"steps": steps}}},
    }
    from workbench.decide.policy import Verdict  # at use: the parser imports this module for TARGETS

    analysis = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": _meta(template, opts, state),
        "spec": {
            "metrics": [
                {
                    "name": "canary-workbench-verdict",
                    "interval": "1m",
                    "count": 1,
                    "failureLimit": 0,
                    "successCondition": f'result.verdict == "{Verdict.PROMOTE.lower()}"',
                    "failureCondition": f'result.verdict == "{Verdict.ROLLBACK.lower()}"',
                    "provider": {
                        "web": {
                            "url": _api(opts, f"/v1/canary/{state['model']}"),
                            "jsonPath": "{$}",
                            "timeoutSeconds": 10,
                        }
                    },
                }
            ]
        },
    }
    return [rollout, analysis]


def flagger(state: dict, ramp: list[int], opts: MeshOptions) -> list[dict]:
    name = opts.service or _k8s_name(state["model"])
    hooks = [
        {"name": hook, "type": hook, "url": _api(opts, f"/v1/flagger/{state['model']}/{hook}"), "timeout": "10s"}
        for hook in ("confirm-traffic-increase", "confirm-promotion", "rollback")
    ]
    canary = {
        "apiVersion": "flagger.app/v1beta1",
        "kind": "Canary",
        "metadata": _meta(name, opts, state),
        "spec": {
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "analysis": {
                "interval": "1m",
                "threshold": 1,
                "stepWeights": [int(w) for w in ramp if w < 100],
                "webhooks": hooks,
            },
        },
    }
    return [canary]


def kserve(state: dict, ramp: list[int], opts: MeshOptions) -> list[dict]:
    name = opts.service or _k8s_name(state["model"])
    return [
        {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": _meta(name, opts, state),
            "spec": {"predictor": {"canaryTrafficPercent": int(state["weight"])}},
        }
    ]


RENDERERS = {"istio": istio, "argo": argo, "flagger": flagger, "kserve": kserve}


def render(target: str, state: dict, ramp: list[int], opts: MeshOptions = MeshOptions()) -> list[dict]:
    """The manifest objects of ``target`` for a verified canary state; an unverified one is refused."""
    if target not in RENDERERS:
        raise WorkbenchError(f"unknown target {target!r}: use one of {', '.join(TARGETS)}")
    if state.get("decision_id") is None:
        raise WorkbenchError(f"model {state.get('model')} has no canary decision: nothing to render")
    if not state.get("verified"):
        raise WorkbenchError(
            f"the canary state of {state.get('model')} does not verify "
            f"({state.get('problem')}); not rendering weights from it"
        )
    return RENDERERS[target](state, list(ramp), opts)


def to_yaml(objects: list[dict]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)


# -- Flagger webhooks -------------------------------------------------------------------------------
FLAGGER_HOOKS = ("confirm-traffic-increase", "confirm-promotion", "rollback")


def flagger_gate(view: dict, hook: str) -> tuple[bool, str]:
    """Whether a Flagger webhook gets 200 (True) or a non-2xx answer, from the latest verified decision.

    ``confirm-traffic-increase``: the latest decision is PROMOTE and the candidate has live weight.
    ``confirm-promotion``: PROMOTE and the weight reached 100. ``rollback`` (200 means "roll back now"):
    the latest decision is a ROLLBACK (or the kill switch), or the chain does not verify.
    """
    from workbench.decide.policy import Verdict  # at use: the parser imports this module for TARGETS

    if hook not in FLAGGER_HOOKS:
        raise WorkbenchError(f"unknown Flagger webhook {hook!r}: use one of {', '.join(FLAGGER_HOOKS)}")
    w, verdict = int(view["weight"]), str(view.get("verdict")).upper()  # the view's verdict is lower case
    if not view.get("verified"):
        why = f"the canary state does not verify: {view.get('problem')}"
        return hook == "rollback", why
    at = f"latest decision {view['decision_id']}: {verdict} at {w}%"
    if hook == "confirm-traffic-increase":
        return verdict == Verdict.PROMOTE and w > 0 and not view.get("killed"), at
    if hook == "confirm-promotion":
        return verdict == Verdict.PROMOTE and w == 100, at
    return verdict == Verdict.ROLLBACK or bool(view.get("killed")), at
