"""Lint and render a Helm chart with the real Helm library (the helm-sdkpy package).

Usage: python3 helm_chart.py lint|render CHART_DIR [VALUES_JSON]
       python3 helm_chart.py install|upgrade|uninstall KUBECONFIG NAMESPACE RELEASE CHART_DIR [VALUES_JSON]

VALUES_JSON is merged over the chart's values.yaml (maps merge key by key, anything else
replaces), the way `--set`/`-f` overrides are. Prints one JSON object on stdout:
- lint: {"errors": [{"severity", "path"[, "message"]}...], "warnings": [...]} from Helm's
  linter, which validates the values against values.schema.json and renders every template
  (Helm's lint messages carry no text; a template's `fail`, which lint mode only logs, is
  reported as an error with its message, since it would abort a real install).
- render: {"templates": {"templates/deployment.yaml": "<rendered text>", ...}}, NOTES.txt
  included.
- install (creating NAMESPACE), upgrade, uninstall: {"status": "deployed"|"uninstalled",
  "revision": N} of RELEASE in the cluster of KUBECONFIG. Install and upgrade do not wait for
  the operator's pods: the tests check the objects Helm creates, not a running image.

helm-sdkpy exposes no `helm template`, and install needs a cluster. Its linter does render
every template, and in lint mode Helm's `fail` logs its message instead of aborting; so to
render, the chart is copied and given one more template that `include`s each of the others
and hands the (base64) result to `fail`, and the log is read back. The rendering is Helm's own.
"""

import asyncio
import base64
import json
import os
import re
import shutil
import sys
import tempfile

try:
    import helm_sdkpy
    import yaml
except ImportError as err:
    sys.exit(f"{err}: run scripts/install-test-deps.sh to install the test packages")

PROBE = "zz-render-probe.yaml"
MARK = "AIGC-RENDER"
SEVERITY = {1: "info", 2: "warning", 3: "error"}


def merge(base, override):
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(base.get(key), value) if key in base else value
        return out
    return override


def chart_copy(chart_dir, overrides, workdir):
    copy = os.path.join(workdir, os.path.basename(os.path.normpath(chart_dir)))
    shutil.copytree(chart_dir, copy)
    values_path = os.path.join(copy, "values.yaml")
    with open(values_path) as f:
        values = yaml.safe_load(f) or {}
    with open(values_path, "w") as f:
        yaml.safe_dump(merge(values, overrides), f)
    return copy


def run_lint(chart):
    """Helm's lint result and what Helm logged meanwhile (Go writes to file descriptor 2)."""
    with tempfile.TemporaryFile() as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            result = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(chart))
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        return result, log.read().decode("utf-8", "replace")


def template_failures(log):
    """Messages of `fail` calls in the chart's templates, which lint mode only logs but which
    abort a real install."""
    failures = []
    for line in log.splitlines():
        if "funcMap fail" not in line or MARK in line:
            continue
        found = re.search(r'message=("(?:[^"\\]|\\.)*"|\S+)', line)
        if found:
            value = found.group(1)
            failures.append(json.loads(value) if value.startswith('"') else value)
    # A template included by others (the config, for its checksum) fails once per inclusion.
    return list(dict.fromkeys(failures))


def lint(chart):
    result, log = run_lint(chart)
    report = {"errors": [], "warnings": []}
    for failure in template_failures(log):
        report["errors"].append({"severity": "error", "path": "templates/", "message": failure})
    for message in result.get("Messages") or []:
        entry = {"severity": SEVERITY.get(message["Severity"], "unknown"), "path": message["Path"]}
        if entry["severity"] == "error":
            report["errors"].append(entry)
        elif entry["severity"] == "warning":
            report["warnings"].append(entry)
    return report


def render(chart):
    templates_dir = os.path.join(chart, "templates")
    names = sorted(
        n
        for n in os.listdir(templates_dir)
        if (n.endswith((".yaml", ".yml")) or n == "NOTES.txt") and n != PROBE
    )
    with open(os.path.join(templates_dir, PROBE), "w") as probe:
        for name in names:
            probe.write(
                '{{- fail (printf "%s %s %s" "' + MARK + '" "templates/' + name + '" '
                '(include (print $.Template.BasePath "/' + name + '") . | b64enc)) }}\n'
            )
    _, text = run_lint(chart)
    failures = template_failures(text)
    if failures:
        sys.exit(f"the chart's templates fail: {failures}")
    rendered = {}
    for name, payload in re.findall(MARK + r" (\S+) ([A-Za-z0-9+/=]*)", text):
        rendered[name] = base64.b64decode(payload).decode("utf-8")
    missing = [f"templates/{n}" for n in names if f"templates/{n}" not in rendered]
    if missing:
        sys.exit(f"Helm rendered no output for {missing}; its log:\n{text}")
    return {"templates": rendered}


def release(action, kubeconfig, namespace, name, chart, values):
    config = helm_sdkpy.Configuration(namespace=namespace, kubeconfig=kubeconfig)
    if action == "install":
        result = asyncio.run(
            helm_sdkpy.Install(config).run(
                name, chart, values=values, create_namespace=True, wait=False, timeout=120
            )
        )
    elif action == "upgrade":
        result = asyncio.run(
            helm_sdkpy.Upgrade(config).run(name, chart, values=values, wait=False, timeout=120)
        )
    else:
        result = asyncio.run(helm_sdkpy.Uninstall(config).run(name, wait=True, timeout=120))
        result = result["release"]
    return {"status": result["info"]["status"], "revision": result.get("version")}


def main():
    if len(sys.argv) in (6, 7) and sys.argv[1] in ("install", "upgrade", "uninstall"):
        action, kubeconfig, namespace, name, chart = sys.argv[1:6]
        values = json.loads(sys.argv[6]) if len(sys.argv) == 7 else {}
        json.dump(release(action, kubeconfig, namespace, name, chart, values), sys.stdout)
        return
    if len(sys.argv) not in (3, 4) or sys.argv[1] not in ("lint", "render"):
        sys.exit(__doc__)
    overrides = json.loads(sys.argv[3]) if len(sys.argv) == 4 else {}
    with tempfile.TemporaryDirectory() as workdir:
        chart = chart_copy(sys.argv[2], overrides, workdir)
        result = lint(chart) if sys.argv[1] == "lint" else render(chart)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
