"""Drives Helm (through helm-sdkpy) against a cluster: lint, install, list, uninstall.

Usage: helm.py KUBECONFIG CHART_DIR. Prints one JSON object with what each step returned.
"""

import asyncio
import json
import sys

try:
    import helm_sdkpy
except ImportError:
    sys.exit("helm-sdkpy is not installed: run scripts/install-test-deps.sh")


async def main(kubeconfig: str, chart: str) -> None:
    config = helm_sdkpy.Configuration(namespace="default", kubeconfig=kubeconfig)
    lint = await helm_sdkpy.Lint(config).run(chart)
    installed = await helm_sdkpy.Install(config).run(
        "smoke", chart, values={"greeting": "hi"}, wait=True, timeout=60
    )
    listed = await helm_sdkpy.List(config).run()
    uninstalled = await helm_sdkpy.Uninstall(config).run("smoke", wait=True, timeout=60)
    print(json.dumps({
        "lint_errors": lint.get("Errors"),
        "install_status": installed["info"]["status"],
        "listed": [release["name"] for release in listed],
        "uninstall_status": uninstalled["release"]["info"]["status"],
    }))


asyncio.run(main(sys.argv[1], sys.argv[2]))
