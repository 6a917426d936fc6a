"""Run an Argo CD health check (Lua) against objects, the way Argo CD does: the object is the
global `obj`, the script's chunk returns a table with `status` and `message`.

Usage: python3 argocd_health.py SCRIPT.lua OBJECTS.json
Reads a JSON array of objects from OBJECTS.json, prints a JSON array of {"status", "message"}.
Argo CD embeds gopher-lua, a Lua 5.1; lupa's Lua 5.1 runtime is used where it has one.
"""

import json
import sys

try:
    try:
        from lupa.lua51 import LuaRuntime
    except ImportError:
        from lupa import LuaRuntime
except ImportError as err:
    sys.exit(f"{err}: run scripts/install-test-deps.sh to install the test packages")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        script = f.read()
    results = []
    with open(sys.argv[2]) as f:
        objects = json.load(f)
    for obj in objects:
        lua = LuaRuntime(unpack_returned_tuples=True)
        lua.globals().obj = lua.table_from(obj, recursive=True)
        hs = lua.execute(script)
        if hs is None:
            sys.exit(f"the script returned nothing for {json.dumps(obj)}")
        results.append({"status": hs["status"], "message": hs["message"]})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
